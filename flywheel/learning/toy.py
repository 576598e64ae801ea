"""A toy conditional shape task with known answers, for tests and benchmarks.

Each example is a procedural shape (rendering.procedural_shapes), turned about the camera
axis and scaled; its "image" is a depth-shaded orthographic projection (so the condition
determines the shape up to what a single view hides). Cheap (no Blender), deterministic,
and hard enough that an untrained model is clearly worse than a trained one.
"""

from __future__ import annotations

import numpy as np
import torch

from rendering.procedural_shapes import grid_points, shape_for
from sam3d_model.config import ModelConfig
from sam3d_model.data import Example, condition_inputs


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)


def projection(
    points: np.ndarray, size: int, centre: tuple[float, float], extent: float
) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic view along +z of camera-frame points: (RGB uint8 (S, S, 3), mask (S, S))."""
    u = ((points[:, 0] - centre[0]) / extent + 0.5) * size
    v = ((points[:, 1] - centre[1]) / extent + 0.5) * size
    keep = (u >= 0) & (u < size) & (v >= 0) & (v < size)
    col, row, z = u[keep].astype(np.intp), v[keep].astype(np.intp), points[keep, 2]
    near = np.full((size, size), np.inf, np.float32)
    np.minimum.at(near, (row, col), z)
    mask = np.isfinite(near)
    zmin, zmax = (near[mask].min(), near[mask].max()) if mask.any() else (0.0, 1.0)
    shade = np.where(mask, 1.0 - 0.7 * (near - zmin) / max(zmax - zmin, 1e-6), 0.0)
    rgb = np.stack([shade, 0.6 * shade + 0.2 * mask, 0.3 + 0.5 * shade * mask], -1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), mask


def toy_example(cfg: ModelConfig, index: int, seed: int = 0) -> Example:
    res = cfg.resolution
    occ = shape_for(seed, index, res).occupancy
    rng = np.random.default_rng([seed, index, 7])
    R = _rot_z(rng.uniform(-np.pi, np.pi))
    s = float(rng.uniform(0.8, 1.2))
    t = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), 2.5], np.float32)
    # cell centres, 4x supersampled so the projection has no holes
    fine = grid_points(4 * res).reshape(-1, 3)
    cell = np.clip(((fine + 0.5) * res).astype(int), 0, res - 1)
    p = fine[occ[cell[:, 0], cell[:, 1], cell[:, 2]]]
    cam = (s * p) @ R.T + t
    rgb, mask = projection(cam, 2 * cfg.image_size, (0.0, 0.0), 1.6)
    crop, full = condition_inputs(cfg, rgb, mask, name=f"toy-{index}")
    return {
        "crop": crop,
        "full": full,
        "full_valid": torch.tensor(True),
        "occupancy": torch.from_numpy(occ.astype(np.float32)),
        "rotation": torch.from_numpy(R),
        "translation": torch.from_numpy(t),
        "scale": torch.tensor(s),
    }


def toy_examples(cfg: ModelConfig, count: int, seed: int = 0, start: int = 0) -> list[Example]:
    return [toy_example(cfg, i, seed) for i in range(start, start + count)]
