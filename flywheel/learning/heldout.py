"""The held-out set and what is reported on it.

A series' held-out set is fixed (its own mesh library and composites, never trained on) and
split **by mesh** into two halves: *selection*, which the promotion gate decides on, and
*reporting*, which only reports and benchmarks read — a gain selected and reported on the
same objects is partly selection on noise. Models and baselines are scored on the same
objects; every comparison is a paired difference per object with a cluster bootstrap 95%
interval (objects of one mesh are drawn together).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from flywheel.core.datasets import Dataset
from flywheel.learning.examples import Example, examples_with_rows
from sam3d_model.baselines import ConstantShape, Retrieval
from sam3d_model.config import ModelConfig
from sam3d_model.evaluation import Interval, Truth, evaluate, paired_gains, summarise
from sam3d_model.interface import Sampler

Split = Literal["selection", "reporting"]
SPLITS: tuple[Split, ...] = ("selection", "reporting")

#: The comparisons a report carries: (name, better side, baseline side).
COMPARISONS = (
    ("challenger-vs-champion", "challenger", "champion"),
    ("champion-vs-constant", "champion", "constant"),
    ("champion-vs-retrieval", "champion", "retrieval"),
    ("challenger-vs-constant", "challenger", "constant"),
)


def halves(mesh_ids: list[str]) -> dict[str, Split]:
    """Each distinct mesh's half: the meshes in the order of their ids' digests, alternately
    selection and reporting (fixed for a fixed set; both halves non-empty from two meshes)."""
    ordered = sorted(set(mesh_ids), key=lambda m: hashlib.sha256(m.encode()).hexdigest())
    return {m: SPLITS[i % 2] for i, m in enumerate(ordered)}


@dataclass(frozen=True)
class HeldOut:
    """Held-out examples, the mesh each shows and their ground truth."""

    examples: list[Example]
    mesh_ids: list[str]
    truths: list[Truth]
    families: list[str]  # each mesh's family in its library ("unknown" where it has none)


def in_half(mesh_ids: list[str], split: Split | None) -> list[int]:
    """The positions of the objects in the ``split`` half (None: all), in the set's order."""
    half = halves(mesh_ids)
    return [i for i, m in enumerate(mesh_ids) if split is None or half[m] == split]


def load_heldout(cfg: ModelConfig, dataset: Dataset, mask_error: float = 0.0, split: Split | None = None) -> HeldOut:
    """A Flying-Occlusions dataset as a held-out set (the occludee is the object to reconstruct;
    ``mask_error``: its mask as a segmenter gives it, see :mod:`rendering.segmenter`), or only
    its ``split`` half (the halves are those of the whole set)."""
    pairs = list(examples_with_rows(cfg, dataset, mask_error=mask_error))
    if not pairs:
        raise ValueError(f"held-out set {dataset.ref} has no samples")
    pairs = [pairs[i] for i in in_half([row["occludee_id"] for _, row in pairs], split)]
    examples = [e for e, _ in pairs]
    mesh_ids = [row["occludee_id"] for _, row in pairs]
    family = mesh_families(dataset)
    return HeldOut(examples, mesh_ids, [Truth.of(e) for e in examples], [family.get(m, "unknown") for m in mesh_ids])


def mesh_families(dataset: Dataset) -> dict[str, str]:
    """mesh id -> family, from the mesh libraries a dataset was made from (its parents)."""
    out: dict[str, str] = {}
    for parent in dataset.marker.get("parents", []):
        if parent["name"] == "meshes":
            library = Dataset(dataset.store, "meshes", parent["version"]).manifest()
            out.update(zip(library.column("mesh_id").to_pylist(), library.column("family").to_pylist()))
    return out


class Scores(BaseModel):
    """Per held-out object (in the set's order): the mesh it shows and its metrics."""

    model_config = ConfigDict(frozen=True)
    mesh_ids: list[str]
    objects: list[dict[str, float]]
    families: list[str] = []  # each object's mesh family (empty: not known)

    def summary(self) -> dict[str, float]:
        return summarise(self.objects)


def score_objects(model: Sampler, heldout: HeldOut, seeds: int, samples: int = 1) -> Scores:
    """Per held-out object, the model's metrics averaged over ``seeds`` predictions, each the
    consensus of ``samples`` samples (:func:`sam3d_model.evaluation.consensus`)."""
    objects = evaluate(model, heldout.examples, seeds=seeds, samples=samples, truths=heldout.truths)["objects"]
    return Scores(mesh_ids=heldout.mesh_ids, objects=objects, families=heldout.families)


def baseline_scores(training: list[Example], heldout: HeldOut) -> dict[str, Scores]:
    """The constant-shape and retrieval baselines, fitted on ``training`` (the examples the
    model learnt from), scored on the held-out objects."""
    if not training:
        raise ValueError("baselines: no training examples to fit them on")
    return {
        "constant": score_objects(ConstantShape.fit(training), heldout, 1),
        "retrieval": score_objects(Retrieval(training), heldout, 1),
    }


class SplitReport(BaseModel):
    """One half of the held-out set: mean metrics per model / baseline, and intervals."""

    model_config = ConfigDict(frozen=True)
    objects: int
    meshes: int
    summary: dict[str, dict[str, float]]  # who -> metric -> mean
    intervals: dict[str, dict[str, tuple[float, float, float]]]  # comparison -> metric -> (gain, low, high)

    def gains(self, comparison: str) -> dict[str, Interval]:
        """Metric -> interval of ``comparison`` (see :data:`COMPARISONS`)."""
        return {m: Interval(*v) for m, v in self.intervals.get(comparison, {}).items()}


def split_report(scores: dict[str, Scores], split: Split | None) -> SplitReport:
    """The ``split`` half (None: all) of the held-out scores of each model / baseline (who -> scores)."""
    mesh_ids = next(iter(scores.values())).mesh_ids
    if any(s.mesh_ids != mesh_ids for s in scores.values()):
        raise ValueError("held-out scores: not all were computed on the same objects")
    keep = in_half(mesh_ids, split)
    if not keep:
        raise ValueError(f"held-out set: no object falls in the {split} half; it needs 2 or more meshes")
    part = {who: [s.objects[i] for i in keep] for who, s in scores.items()}
    groups = [mesh_ids[i] for i in keep]
    intervals = {
        name: {m: (i.gain, i.low, i.high) for m, i in paired_gains(part[base], part[new], groups=groups).items()}
        for name, new, base in COMPARISONS
        if new in part and base in part
    }
    return SplitReport(
        objects=len(keep),
        meshes=len(set(groups)),
        summary={who: summarise(scores) for who, scores in part.items()},
        intervals=intervals,
    )


def heldout_reports(scores: dict[str, Scores]) -> dict[Split, SplitReport]:
    """Both halves' reports."""
    return {split: split_report(scores, split) for split in SPLITS}


def family_report(scores: dict[str, Scores], metric: str = "viou") -> dict[str, dict[str, float]]:
    """Per mesh family: the mean ``metric`` of each model / baseline over every held-out object
    of that family (both halves: it shows where a model fails, nothing decides on it) and the
    number of objects. Empty when the families are not known."""
    first = next(iter(scores.values()))
    if not first.families:
        return {}
    out: dict[str, dict[str, float]] = {}
    for family in sorted(set(first.families)):
        rows = [i for i, f in enumerate(first.families) if f == family]
        out[family] = {"objects": float(len(rows))}
        out[family].update({who: float(np.mean([s.objects[i][metric] for i in rows])) for who, s in scores.items()})
    return out


def baseline_warnings(report: SplitReport) -> list[str]:
    """The round's loudest news, one line each: a model that does not beat the constant-shape
    baseline on held-out vIoU with 95% confidence (it has not learnt shape from the image), and
    one whose rotation error is credibly *worse* than the constant's mean training pose (its
    pose reads the image wrongly; a rotation interval spans tens of degrees on a held-out half,
    so "not credibly better" would be every round's news)."""
    where = f"({report.objects} objects of {report.meshes} meshes, reporting half)"
    out = []
    for who in ("champion", "challenger"):
        gains = report.gains(f"{who}-vs-constant")
        shape, pose = gains.get("viou"), gains.get("rotation_error_deg")
        if shape is not None and shape.low <= 0:
            out.append(f"the {who} does not beat the constant-shape baseline on held-out viou: gain {shape} {where}")
        if pose is not None and pose.high < 0:
            out.append(
                f"the {who}'s held-out rotation error is worse than the mean training pose's: gain {pose} degrees "
                f"{where}; see the rotation error by mesh family"
            )
    return out


class SeedNoise(BaseModel):
    """What reseeding alone does to a metric: one training stage run from the same start on
    the same data with each of ``seeds``, each scored on one held-out half. A challenger's gain
    no larger than the ``spread`` could be the luck of its seed."""

    model_config = ConfigDict(frozen=True)
    stage: str
    metric: str
    split: Split
    seeds: list[int]
    values: list[float]  # the metric's mean over the half, one per seed
    round: int  # the round it was measured in

    @property
    def spread(self) -> float:
        return max(self.values) - min(self.values)

    def __str__(self) -> str:
        runs = ", ".join(f"{v:.3f}" for v in self.values)
        return (
            f"{self.metric} spread {self.spread:.4f} over {len(self.seeds)} training seeds of {self.stage} "
            f"({runs}; {self.split} half, measured in round {self.round})"
        )


def seed_noise(stage: str, metric: str, split: Split, scores: dict[int, Scores], round_index: int) -> SeedNoise:
    """The :class:`SeedNoise` of ``stage`` from its scores per training seed (seed -> scores)."""
    if len(scores) < 2:
        raise ValueError(f"seed noise of {stage}: needs 2 or more seeds, got {len(scores)}")
    seeds = sorted(scores)
    values = [scores[s].summary()[metric] for s in seeds]
    return SeedNoise(stage=stage, metric=metric, split=split, seeds=seeds, values=values, round=round_index)
