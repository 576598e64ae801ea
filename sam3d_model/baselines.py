"""Baselines a trained model must beat, fitted on its *training* examples only.

Both answer :meth:`GeometryModel.sample` (seeds are ignored: they are deterministic), so
:func:`sam3d_model.evaluation.evaluate` scores them exactly like a model:

* :class:`ConstantShape` — one shape and one pose for every image: the mean occupancy of the
  training examples thresholded where it scores best on them, and the mean training pose
  (chordal mean rotation, mean translation, geometric-mean scale).
* :class:`Retrieval` — the shape and pose of the nearest training example by an image
  embedding of the condition (the object crop and its mask, average-pooled), which never
  sees the answer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sam3d_model.geometry import mean_rotation
from sam3d_model.interface import Prediction


def _stack(examples: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
    return torch.stack([e[key] for e in examples]).float()


class _Deterministic:
    """A baseline answers :meth:`Sampler.sample` with one answer per image, whatever the seed."""

    def sample(
        self,
        batch: dict[str, torch.Tensor],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        shortcut: bool = False,
        seed: int = 0,
    ) -> Prediction:
        """Deterministic: the sampling options change nothing."""
        return self.predict(batch)

    def predict(self, batch: dict[str, torch.Tensor]) -> Prediction:
        raise NotImplementedError


class ConstantShape(_Deterministic):
    """The same shape and pose for every object."""

    def __init__(self, occupancy: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, scale: float):
        self.occupancy, self.rotation, self.translation, self.scale = occupancy, rotation, translation, scale

    @classmethod
    def fit(cls, examples: list[dict[str, torch.Tensor]], thresholds: int = 19) -> ConstantShape:
        """The mean training occupancy, cut at the threshold (of ``thresholds`` in (0, 1)) with
        the best mean vIoU on the training examples; the mean training pose."""
        if not examples:
            raise ValueError("ConstantShape.fit: no training examples")
        targets = _stack(examples, "occupancy") > 0.5
        mean = targets.float().mean(0)
        flat = targets.flatten(1)
        best, best_iou = 0.5, -1.0
        for level in np.linspace(0, 1, thresholds + 2)[1:-1]:
            shape = (mean > level).flatten()
            union = (flat | shape).sum(1).clamp(min=1)
            iou = float(((flat & shape).sum(1) / union).mean())
            if iou > best_iou:
                best, best_iou = float(level), iou
        log_scale = torch.log(_stack(examples, "scale")).mean()
        return cls(
            (mean > best).float(),
            mean_rotation(_stack(examples, "rotation")),
            _stack(examples, "translation").mean(0),
            float(torch.exp(log_scale)),
        )

    def predict(self, batch: dict[str, torch.Tensor]) -> Prediction:
        n = batch["crop"].shape[0]
        return Prediction(
            self.occupancy.expand(n, *self.occupancy.shape).clone(),
            self.rotation.expand(n, 3, 3).clone(),
            self.translation.expand(n, 3).clone(),
            torch.full((n,), self.scale),
        )


def image_embedding(crop: torch.Tensor, side: int = 8) -> torch.Tensor:
    """(B, C, S, S) condition crops -> (B, C·side²) unit vectors: each channel average-pooled
    to side × side, centred per image."""
    pooled = F.adaptive_avg_pool2d(crop.float(), side).flatten(1)
    pooled = pooled - pooled.mean(1, keepdim=True)
    return F.normalize(pooled, dim=1)


class Retrieval(_Deterministic):
    """The nearest training example's shape and pose, by :func:`image_embedding` of the crop."""

    def __init__(self, examples: list[dict[str, torch.Tensor]]):
        if not examples:
            raise ValueError("Retrieval: no training examples")
        self.keys = image_embedding(_stack(examples, "crop"))
        self.occupancy = _stack(examples, "occupancy")
        self.rotation = _stack(examples, "rotation")
        self.translation = _stack(examples, "translation")
        self.scale = _stack(examples, "scale")

    def predict(self, batch: dict[str, torch.Tensor]) -> Prediction:
        nearest = (image_embedding(batch["crop"]) @ self.keys.T).argmax(1)
        return Prediction(
            self.occupancy[nearest], self.rotation[nearest], self.translation[nearest], self.scale[nearest]
        )
