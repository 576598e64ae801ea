"""Adapter from :class:`~sam3d_model.interface.GeometryModel` to the released SAM 3D Objects
checkpoint (github.com/facebookresearch/sam-3d-objects; weights on Hugging Face behind a
licence, supplied by the user — nothing is downloaded here).

Needs a CUDA GPU with >= 32 GB, a checkout of that repository with its dependencies
installed, and its ``checkpoints/<tag>/pipeline.yaml``. Everything else fails early with a
message that says what is missing. Only :meth:`sample` maps onto the released pipeline
(stage 1: sparse structure + layout); training it is out of scope for this project.

Unverified here (no such GPU, no weights): the released pipeline reports layout in the
PyTorch3D camera frame (x left, y up, z forward) with a (w, x, y, z) quaternion; the
adapter converts to this project's OpenCV frame by flipping x and y.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from sam3d_model.interface import Prediction

MIN_GPU_MEMORY_GB = 32
_P3D_TO_OPENCV = torch.diag(torch.tensor([-1.0, -1.0, 1.0]))


class Sam3DUnavailable(RuntimeError):
    """The released model cannot run here; the message says what is missing and how to fix it."""


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) unit quaternions (w, x, y, z) -> (..., 3, 3)."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def voxels_to_grid(coords: torch.Tensor, source: int, resolution: int) -> torch.Tensor:
    """Sparse voxel coordinates (N, 3) or (N, 4 with a leading batch index) on a source³ grid
    -> a dense (resolution³) occupancy grid (max-pooled when resolution < source)."""
    xyz = coords[:, -3:].long().clamp(0, source - 1)
    grid = torch.zeros((source,) * 3)
    grid[xyz[:, 0], xyz[:, 1], xyz[:, 2]] = 1.0
    if resolution != source:
        if source % resolution:
            raise ValueError(f"cannot pool a {source}^3 grid to {resolution}^3")
        k = source // resolution
        grid = torch.nn.functional.max_pool3d(grid[None, None], k)[0, 0]
    return grid


class Sam3DObjectsAdapter:
    """The released SAM 3D Objects pipeline behind the GeometryModel interface.

    ``sample`` needs the original image: a batch carries ``image`` (B, H, W, 3) uint8 and
    ``mask`` (B, H, W) bool next to the small model's tensors."""

    def __init__(
        self,
        repo_path: str | Path,
        config_file: str | Path | None = None,
        *,
        resolution: int = 64,
        compile: bool = False,
    ):
        repo = Path(repo_path)
        if not (repo / "notebook" / "inference.py").is_file():
            raise Sam3DUnavailable(
                f"SAM 3D Objects repository not found at {repo} (no notebook/inference.py): "
                "clone github.com/facebookresearch/sam-3d-objects there and install it "
                "(doc/setup.md of that repository)"
            )
        config = Path(config_file) if config_file else repo / "checkpoints" / "hf" / "pipeline.yaml"
        if not config.is_file():
            raise Sam3DUnavailable(
                f"SAM 3D Objects weights not found: {config} is missing; request access at "
                "huggingface.co/facebook/sam-3d-objects and download the checkpoints there"
            )
        if not torch.cuda.is_available():
            raise Sam3DUnavailable("SAM 3D Objects needs a CUDA GPU; none is visible to torch")
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        if memory < MIN_GPU_MEMORY_GB:
            raise Sam3DUnavailable(
                f"SAM 3D Objects needs a GPU with >= {MIN_GPU_MEMORY_GB} GB; this one has {memory:.0f} GB"
            )
        sys.path[:0] = [str(repo), str(repo / "notebook")]
        try:
            from inference import Inference  # the repository's public API (notebook/inference.py)
        except ImportError as e:
            raise Sam3DUnavailable(
                f"SAM 3D Objects is checked out at {repo} but cannot be imported: {e}; "
                "install its requirements (doc/setup.md of that repository)"
            ) from None
        self.resolution = resolution
        self._pipeline = Inference(str(config), compile=compile)._pipeline

    def sample(
        self,
        batch: dict[str, torch.Tensor],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        shortcut: bool = False,
        seed: int = 0,
    ) -> Prediction:
        if "image" not in batch or "mask" not in batch:
            raise ValueError(
                "Sam3DObjectsAdapter.sample needs the full-resolution 'image' (B, H, W, 3) uint8 "
                "and 'mask' (B, H, W) bool in the batch"
            )
        occ, rots, trans, scales = [], [], [], []
        for i in range(batch["image"].shape[0]):
            rgba = np.concatenate(
                [
                    batch["image"][i].cpu().numpy()[..., :3],
                    batch["mask"][i].cpu().numpy()[..., None].astype(np.uint8) * 255,
                ],
                axis=-1,
            )
            out = self._pipeline.run(
                rgba,
                None,
                seed + i,
                stage1_only=True,
                stage1_inference_steps=steps,
                use_stage1_distillation=shortcut,
                guidance=guidance,
            )
            missing = {"coords", "rotation", "translation", "scale"} - set(out)
            if missing:
                raise RuntimeError(
                    f"SAM 3D Objects returned no {sorted(missing)} (keys: {sorted(out)}); "
                    "this adapter was written against the release of November 2025"
                )
            occ.append(voxels_to_grid(out["coords"].cpu(), 64, self.resolution))
            rots.append(_P3D_TO_OPENCV @ quaternion_to_matrix(out["rotation"].reshape(4).float().cpu()))
            trans.append(_P3D_TO_OPENCV @ out["translation"].reshape(3).float().cpu())
            scales.append(out["scale"].reshape(-1)[0].float().cpu())
        return Prediction(torch.stack(occ), torch.stack(rots), torch.stack(trans), torch.stack(scales))

    def losses(self, batch, generator):
        raise NotImplementedError(
            "training the released SAM 3D checkpoint is out of scope; train the small model (sam3d_model.train) instead"
        )

    def encode_shape(self, occupancy):
        raise NotImplementedError("the released pipeline does not expose its sparse-structure encoder")

    def decode_shape(self, tokens):
        raise NotImplementedError(
            "the released pipeline does not expose its sparse-structure decoder on latent tokens; use sample()"
        )
