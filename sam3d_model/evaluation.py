"""Held-out evaluation of a model: shape and layout metrics on examples with ground truth,
and paired bootstrap intervals for the difference between two models on the same objects.

Each object is predicted at fixed seeds (``seeds``), so the same model on the same examples
always scores the same; per-object scores are averaged over seeds, then over objects. A
prediction is one sample of the model, or with ``samples`` K > 1 the :func:`consensus` of K
samples: the model's point estimate (one sample is a draw from what the model believes, and
scores worse than their consensus on the metrics that compare against one truth). The
metrics and their conventions are those of :mod:`sam3d_model.metrics`: vIoU, F1@0.01,
Chamfer and EMD (shapes normalised to [-1, 1] each; distances of an empty prediction are
counted apart instead of averaging in an infinity), ``f1_unit_cube`` / ``chamfer_unit_cube``,
symmetry-aware rotation error, ICP-Rot, translation error, ADD-S / diameter, ADD-S@0.1 and
oriented 3D IoU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from sam3d_model.data import collate
from sam3d_model.geometry import mean_rotation
from sam3d_model.interface import Prediction, Sampler
from sam3d_model.metrics import (
    add_s,
    diameter,
    icp_rotation_error_deg,
    occupancy_to_mesh,
    oriented_box_iou,
    rotation_error_deg,
    shape_metrics,
    surface_points,
    symmetric_rotation_error_deg,
    symmetries,
    voxel_iou,
)

CONDITION_KEYS = ("crop", "full", "full_valid")

#: Larger is better for these; smaller for every other metric.
HIGHER_IS_BETTER = frozenset({"viou", "f1", "f1_unit_cube", "add_s_accuracy", "box_iou"})

#: Distances that are infinite for an empty prediction: averaged over the finite ones.
DISTANCES = ("chamfer", "emd", "chamfer_unit_cube", "add_s")


@dataclass(frozen=True)
class Truth:
    """One held-out object's ground truth, with what its scores need computed once."""

    occupancy: np.ndarray  # (R, R, R) bool
    pose: tuple[np.ndarray, np.ndarray, float]  # (R (3, 3), t (3,), s)
    points: np.ndarray  # (n, 3) surface points of the true shape, normalised frame
    diameter: float  # of the true shape in the normalised frame (x s in the camera frame)
    symmetries: np.ndarray  # (k, 3, 3) rotations that map the shape onto itself

    @classmethod
    def of(cls, example: dict[str, torch.Tensor]) -> Truth:
        occupancy = example["occupancy"].numpy() > 0.5
        if not occupancy.any():
            raise ValueError("held-out example: the true shape is empty")
        pose = (example["rotation"].numpy(), example["translation"].numpy(), float(example["scale"]))
        return cls(occupancy, pose, *_shape_truth(np.packbits(occupancy).tobytes(), occupancy.shape))


@lru_cache(maxsize=1024)
def _shape_truth(packed: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, float, np.ndarray]:
    """A true shape's surface points, diameter and symmetries (~55 ms; a round scores the
    same held-out shapes several times), keyed by the shape's own bits."""
    mesh = occupancy_to_mesh(
        np.unpackbits(np.frombuffer(packed, np.uint8), count=int(np.prod(shape))).reshape(shape) > 0
    )
    points, found = surface_points(mesh, 512), symmetries(surface_points(mesh, 20_000, seed=1))
    points.flags.writeable = found.flags.writeable = False  # shared by every Truth of this shape
    return points, diameter(mesh.vertices), found


def score(pred: dict[str, Any], truth: Truth) -> dict[str, float]:
    """Every metric of one prediction (:meth:`Prediction.item`) against one truth."""
    pose = (pred["rotation"], pred["translation"], pred["scale"])
    relative = add_s(truth.points, pose, truth.pose) / (truth.diameter * truth.pose[2])
    return {
        **shape_metrics(pred["occupancy"], truth.occupancy, count=1024),
        "rotation_error_deg": symmetric_rotation_error_deg(pose[0], truth.pose[0], truth.symmetries),
        "rotation_error_deg_plain": rotation_error_deg(pose[0], truth.pose[0]),
        "icp_rotation_error_deg": icp_rotation_error_deg(
            pose[0], surface_points(pred["occupancy"], len(truth.points)), truth.pose[0], truth.points, truth.symmetries
        ),
        "translation_error": float(np.linalg.norm(pose[1] - truth.pose[1])),
        "add_s": relative,
        "add_s_accuracy": float(relative < 0.1),
        "box_iou": oriented_box_iou(pred["occupancy"], pose, truth.occupancy, truth.pose),
    }


def repeated(batch: dict[str, torch.Tensor], samples: int) -> dict[str, torch.Tensor]:
    """A condition batch of B objects -> K·B rows, sample-major (row k·B + i is object i)."""
    return {k: v.repeat(samples, *([1] * (v.dim() - 1))) for k, v in batch.items()}


def consensus(pred: Prediction, samples: int) -> Prediction:
    """K samples of each of B objects (K·B rows, sample-major as :func:`repeated` lays them
    out) -> one prediction per object: the mean occupancy probability (cut at 0.5: the voxels
    most samples fill), the chordal mean rotation, the mean translation and the geometric-mean
    scale."""
    if len(pred) % samples:
        raise ValueError(f"consensus: {len(pred)} rows are not {samples} samples of each object")
    if samples == 1:
        return pred

    def split(x: torch.Tensor) -> torch.Tensor:  # (K·B, ...) -> (K, B, ...)
        return x.reshape(samples, -1, *x.shape[1:])

    return Prediction(
        split(pred.occupancy).mean(0),
        mean_rotation(split(pred.rotation)),
        split(pred.translation).mean(0),
        torch.exp(torch.log(split(pred.scale).clamp_min(1e-12)).mean(0)),
    )


def evaluate(
    model: Sampler,
    examples: list[dict[str, torch.Tensor]],
    *,
    seeds: int = 2,
    samples: int = 1,
    batch_size: int = 16,
    shortcut: bool = False,
    truths: list[Truth] | None = None,
) -> dict[str, Any]:
    """``examples``: training-style examples (condition + ``occupancy``, ``rotation``,
    ``translation``, ``scale`` targets); ``samples``: each prediction is the :func:`consensus`
    of this many samples (drawn in one batch); ``truths``: their :class:`Truth` if already
    computed (several models on one set). Returns {"summary": {metric: mean}, "objects": [per
    object]}."""
    if not examples:
        raise ValueError("evaluate: the held-out set is empty")
    if samples < 1:
        raise ValueError(f"evaluate: samples must be 1 or more, got {samples}")
    truths = truths or [Truth.of(e) for e in examples]
    per_object: list[list[dict]] = [[] for _ in examples]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = repeated(collate([{k: e[k] for k in CONDITION_KEYS} for e in chunk]), samples)
        for seed in range(seeds):
            pred = consensus(model.sample(batch, shortcut=shortcut, seed=seed), samples)
            for i in range(len(chunk)):
                per_object[start + i].append(score(pred.item(i), truths[start + i]))
    objects = [{k: float(np.mean([s[k] for s in scores])) for k in scores[0]} for scores in per_object]
    return {"summary": summarise(objects), "objects": objects}


def viou_probe(examples: list[dict[str, torch.Tensor]], batch_size: int = 16) -> Callable[[Sampler], dict[str, float]]:
    """A cheap learning-curve probe: mean vIoU of one sample (seed 0) per example, the shape
    metric only (the surface metrics cost ~100x more). Held-out examples here only watch a
    stage learn; nothing may stop or choose on them."""
    if not examples:
        raise ValueError("viou_probe: no examples")
    truths = [(e["occupancy"] > 0.5).numpy() for e in examples]

    def probe(model: Sampler) -> dict[str, float]:
        values = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            pred = model.sample(collate([{k: e[k] for k in CONDITION_KEYS} for e in chunk]), seed=0)
            values += [voxel_iou(pred.item(i)["occupancy"], truths[start + i]) for i in range(len(chunk))]
        return {"heldout_viou": float(np.mean(values))}

    return probe


def summarise(objects: list[dict[str, float]]) -> dict[str, float]:
    """Means over objects (distances over the finite ones), empty predictions and the count."""
    summary = {k: float(np.mean([o[k] for o in objects])) for k in objects[0] if k not in DISTANCES}
    for k in DISTANCES:
        finite = [o[k] for o in objects if k in o and np.isfinite(o[k])]
        summary[k] = float(np.mean(finite)) if finite else float("nan")
    summary["empty_predictions"] = float(sum(not np.isfinite(o["chamfer"]) for o in objects))
    summary["objects"] = float(len(objects))
    return summary


def gain(metric: str, new: float, old: float) -> float:
    """How much better ``new`` is than ``old`` on ``metric`` (positive: better), whichever way it points."""
    return new - old if metric in HIGHER_IS_BETTER else old - new


@dataclass(frozen=True)
class Interval:
    """A paired difference (gain of b over a, positive: better) and its bootstrap 95% interval."""

    gain: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.gain:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def paired_gains(
    a: list[dict[str, float]],
    b: list[dict[str, float]],
    *,
    groups: list[str] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Per metric, the mean gain of ``b`` over ``a`` on the same objects (per-object paired
    differences) with a percentile bootstrap interval. ``groups`` (one label per object, e.g.
    its mesh) makes it a cluster bootstrap: objects of one mesh are drawn together, since they
    are not independent. Objects where either side is infinite are left out of that metric."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_gains: need the same, non-empty objects on both sides ({len(a)} vs {len(b)})")
    labels = np.asarray(groups if groups is not None else range(len(a)))
    clusters = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(clusters), size=(resamples, len(clusters)))
    out = {}
    for metric in a[0]:
        if metric not in b[0]:
            continue
        diff = np.array([gain(metric, y[metric], x[metric]) for x, y in zip(a, b)])
        ok = np.isfinite(diff)
        if not ok.any():
            continue
        sums = np.array([diff[c][ok[c]].sum() for c in clusters])
        counts = np.array([ok[c].sum() for c in clusters])
        boot = sums[draws].sum(1) / np.maximum(counts[draws].sum(1), 1)
        tail = (1 - level) / 2 * 100
        out[metric] = Interval(
            float(diff[ok].mean()), float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))
        )
    return out
