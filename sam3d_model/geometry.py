"""Layout parametrisation: rotation as normalised 6D, translation, log scale.

Conventions are those of :mod:`flywheel.core.contracts`: an object's normalised points map to
camera frame by ``p_cam = R @ (s * p) + t``. The 6D rotation is the first two columns of
R (Zhou et al., continuous and unique up to Gram-Schmidt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sam3d_model.config import ModelConfig


def rot6d_from_matrix(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 6): first column then second column."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def matrix_from_rot6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) proper rotations by Gram-Schmidt; any non-degenerate input works."""
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def layout_tokens(cfg: ModelConfig, R: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised flow targets from a pose: R (B,3,3), t (B,3), s (B,) ->
    {"rotation": (B,6), "translation": (B,3), "scale": (B,1)}."""
    mean = torch.tensor(cfg.translation_mean, dtype=t.dtype, device=t.device)
    std = torch.tensor(cfg.translation_std, dtype=t.dtype, device=t.device)
    log_s = (torch.log(s.clamp_min(1e-6)) - cfg.log_scale_mean) / cfg.log_scale_std
    return {"rotation": rot6d_from_matrix(R), "translation": (t - mean) / std, "scale": log_s[:, None]}


def pose_from_tokens(
    cfg: ModelConfig, tokens: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`layout_tokens`: (R (B,3,3), t (B,3), s (B,))."""
    tr = tokens["translation"]
    mean = torch.tensor(cfg.translation_mean, dtype=tr.dtype, device=tr.device)
    std = torch.tensor(cfg.translation_std, dtype=tr.dtype, device=tr.device)
    s = torch.exp(tokens["scale"][:, 0] * cfg.log_scale_std + cfg.log_scale_mean)
    return matrix_from_rot6d(tokens["rotation"]), tr * std + mean, s


def mean_rotation(rotations: torch.Tensor) -> torch.Tensor:
    """(K, ..., 3, 3) rotations -> (..., 3, 3): over the first axis, the proper rotation nearest
    to their mean matrix (the chordal L2 mean)."""
    u, _, vt = torch.linalg.svd(rotations.double().mean(0))
    flip = torch.ones(u.shape[:-1], dtype=u.dtype, device=u.device)
    flip[..., -1] = torch.sign(torch.det(u @ vt))
    return (u @ torch.diag_embed(flip) @ vt).to(rotations.dtype)


def voxel_centres(resolution: int) -> torch.Tensor:
    """(R³, 3) centres of a (R, R, R) grid's voxels in the normalised frame, x-major like the grid
    (voxel i's centre at (i + 0.5) / R - 0.5, as ``metrics.occupancy_to_mesh``)."""
    axis = (torch.arange(resolution) + 0.5) / resolution - 0.5
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def symmetric_rotation_loss(
    occupancy: torch.Tensor,
    R_pred: torch.Tensor,
    R_true: torch.Tensor,
    count: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ADD-S of the rotation alone, relative to the shape's diameter: occupancy (B, R, R, R) of
    the true shape, rotations (B, 3, 3) -> (B,). ``count`` occupied voxels, drawn, are turned by
    R_true; each one's distance to the nearest of *all* occupied voxels turned by R_pred is
    averaged, so a turn that maps the shape onto itself costs nothing (up to the voxels' own
    discreteness): the symmetric rotation error the evaluation scores, made differentiable."""
    b, r = occupancy.shape[0], occupancy.shape[-1]
    occupied = occupancy.reshape(b, -1) > 0.5
    centres = voxel_centres(r).to(R_pred)
    index = torch.multinomial(occupied.float() + 1e-9, count, replacement=True, generator=generator)
    true = centres[index] @ R_true.to(R_pred).transpose(1, 2)  # (B, count, 3)
    pred = centres @ R_pred.transpose(1, 2)  # (B, R³, 3)
    far = (~occupied).to(R_pred)[:, None, :] * 1e3  # unoccupied voxels are never the nearest
    nearest = (torch.cdist(true, pred) + far).min(dim=-1).values.mean(-1)
    # the diameter, nearly: the largest distance from a drawn voxel to any occupied one
    reach = torch.cdist(centres[index], centres.expand(b, -1, -1)) - far
    return nearest / reach.flatten(1).amax(-1).clamp_min(1.0 / r)
