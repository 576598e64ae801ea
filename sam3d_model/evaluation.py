"""Held-out evaluation of a model: shape and layout metrics on examples with ground truth.

Each object is sampled at fixed seeds (``seeds``), so the same model on the same examples
always scores the same; per-object scores are averaged over seeds, then over objects.
Shape: vIoU, F1@0.01, Chamfer (surface to surface, not squared; empty predictions are
counted apart instead of averaging in an infinity). Layout: rotation error (degrees),
translation error, ADD-S@0.1 accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from sam3d_model.data import collate
from sam3d_model.interface import GeometryModel
from sam3d_model.metrics import add_s_accuracy, rotation_error_deg, shape_metrics, surface_points

#: Larger is better for these; smaller for the rest (see :func:`better`).
CONDITION_KEYS = ("crop", "full", "full_valid")


def evaluate(
    model: GeometryModel,
    examples: list[dict[str, torch.Tensor]],
    *,
    seeds: int = 2,
    batch_size: int = 16,
    shortcut: bool = False,
) -> dict:
    """``examples``: training-style examples (condition + ``occupancy``, ``rotation``,
    ``translation``, ``scale`` targets). Returns {"summary": {metric: mean}, "objects": [...]}."""
    if not examples:
        raise ValueError("evaluate: the held-out set is empty")
    per_object: list[list[dict]] = [[] for _ in examples]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate([{k: e[k] for k in CONDITION_KEYS} for e in chunk])
        for seed in range(seeds):
            pred = model.sample(batch, shortcut=shortcut, seed=seed)
            for i, example in enumerate(chunk):
                per_object[start + i].append(_score(pred.item(i), example))
    objects = [{k: float(np.mean([s[k] for s in scores])) for k in scores[0]} for scores in per_object]
    summary = {k: float(np.mean([o[k] for o in objects])) for k in objects[0] if k != "chamfer"}
    finite = [o["chamfer"] for o in objects if np.isfinite(o["chamfer"])]
    summary["chamfer"] = float(np.mean(finite)) if finite else float("nan")
    summary["empty_predictions"] = float(sum(not np.isfinite(o["chamfer"]) for o in objects))
    summary["objects"] = float(len(objects))
    return {"summary": summary, "objects": objects}


def _score(pred: dict[str, np.ndarray], example: dict[str, torch.Tensor]) -> dict[str, float]:
    true_occ = example["occupancy"].numpy() > 0.5
    shape = shape_metrics(pred["occupancy"], true_occ, count=1024)
    true_pose = (example["rotation"].numpy(), example["translation"].numpy(), float(example["scale"]))
    pred_pose = (pred["rotation"], pred["translation"], pred["scale"])
    points = surface_points(true_occ, 512) if true_occ.any() else np.zeros((1, 3))
    return {
        "viou": shape["viou"],
        "f1": shape["f1@0.01"],
        "chamfer": shape["chamfer"],
        "rotation_error_deg": rotation_error_deg(pred_pose[0], true_pose[0]),
        "translation_error": float(np.linalg.norm(pred_pose[1] - true_pose[1])),
        "add_s_accuracy": float(add_s_accuracy(points, pred_pose, true_pose)),
    }
