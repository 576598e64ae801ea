"""The one model interface the pipeline uses: the small model and the SAM 3D adapter both
implement it, so candidate generation and evaluation never care which is behind it.

A *condition batch* is a dict of tensors (see :mod:`sam3d_model.data`):
``crop`` and ``full`` (B, C_in, S, S) — RGB in [-1, 1], mask in {0, 1}, optional point map
channels — and ``full_valid`` (B,) bool. Training batches add the targets ``occupancy``
(B, R, R, R), ``rotation`` (B, 3, 3), ``translation`` (B, 3) and ``scale`` (B,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Prediction:
    """What a model proposes for each object of a batch (pose: p_cam = R @ (s p) + t)."""

    occupancy: torch.Tensor  # (B, R, R, R) probabilities in [0, 1], (x, y, z) over the unit cube
    rotation: torch.Tensor  # (B, 3, 3)
    translation: torch.Tensor  # (B, 3)
    scale: torch.Tensor  # (B,)

    def __len__(self) -> int:
        return self.occupancy.shape[0]

    def item(self, i: int) -> dict[str, Any]:
        """One object as numpy arrays: occupancy bool (R, R, R), R, t; s as a float."""
        return {
            "occupancy": (self.occupancy[i] > 0.5).cpu().numpy(),
            "rotation": self.rotation[i].float().cpu().numpy(),
            "translation": self.translation[i].float().cpu().numpy(),
            "scale": float(self.scale[i]),
        }


@runtime_checkable
class Sampler(Protocol):
    """What evaluation needs of a model or a baseline: proposals for a condition batch."""

    def sample(
        self,
        batch: dict[str, torch.Tensor],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        shortcut: bool = False,
        seed: int = 0,
    ) -> Prediction:
        """Propose a shape and layout per object; the same seed gives the same proposal."""


@runtime_checkable
class GeometryModel(Sampler, Protocol):
    """sample (:class:`Sampler`) / losses / encode_shape / decode_shape."""

    def losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Training losses on a batch with targets: {"loss": scalar, ...}."""

    def encode_shape(self, occupancy: torch.Tensor) -> torch.Tensor:
        """(B, R, R, R) occupancy -> (B, N, C) shape latent tokens."""

    def decode_shape(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) shape latent tokens -> (B, R, R, R) occupancy probabilities."""
