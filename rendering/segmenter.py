"""The mask errors a segmenter makes, for the demo's "real" world.

A photo's object mask comes from a segmenter (SAM, a person's clicks), not from a renderer's
object index: its boundary sits a pixel or two off, it bleeds into a touching occluder or
misses a thin part, it has holes. :func:`segmenter_mask` puts such errors into an exact
mask, seeded, so a "real" image reads the same every time.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage


def _disc(shape: tuple[int, ...], centre: tuple[int, ...], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def seed_of(key: str) -> int:
    """A stable seed from a sample key (the same image gets the same errors everywhere)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def segmenter_mask(mask: np.ndarray, error: float, seed: int) -> np.ndarray:
    """``mask`` (bool (H, W)) as a segmenter might return it; ``error`` ~ the share of the
    mask's area that is wrong (0: the mask itself).

    Three errors, each drawn independently: the boundary moved in or out by one or two pixels;
    a blob of ``error / 2`` of the area added at the boundary (bleeding into what touches the
    object) or cut from it (a missed part); and, at half the rate, a hole. The result is never
    empty: if the errors would erase the object, the exact mask is returned."""
    if error <= 0 or not mask.any():
        return mask
    rng = np.random.default_rng(seed)
    out = mask.copy()
    area = float(mask.sum())
    if rng.uniform() < min(1.0, 4 * error):
        width = int(rng.integers(1, 3))
        grow = ndimage.binary_dilation if rng.uniform() < 0.5 else ndimage.binary_erosion
        out = grow(out, iterations=width)
    edge = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    centre = tuple(edge[rng.integers(len(edge))])
    blob = _disc(mask.shape, centre, np.sqrt(error / 2 * area / np.pi))
    out = out | blob if rng.uniform() < 0.5 else out & ~blob
    if out.any() and rng.uniform() < error * 2:
        inside = np.argwhere(out)
        hole = _disc(mask.shape, tuple(inside[rng.integers(len(inside))]), np.sqrt(error / 4 * area / np.pi))
        out &= ~hole
    return out if out.any() else mask
