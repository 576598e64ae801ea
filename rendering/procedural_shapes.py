"""Seeded procedural closed shapes as filled occupancy grids (numpy only).

Grids are bool[res, res, res] indexed (x, y, z) over the unit cube [-0.5, 0.5]^3, cell
centres at -0.5 + (i + 0.5) / res (contracts.py conventions). These stand in for a mesh
library in the demo and in tests; the mesh library adds real meshes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAMILIES = ("superquadric", "torus", "compound")


@dataclass(frozen=True)
class Shape:
    family: str
    params: tuple[float, ...]
    occupancy: np.ndarray  # bool[res, res, res]


def grid_points(res: int) -> np.ndarray:
    """Cell centres, float64[res, res, res, 3], indexed (x, y, z)."""
    c = -0.5 + (np.arange(res) + 0.5) / res
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def superquadric(points: np.ndarray, scale, e1: float, e2: float, rotation, centre) -> np.ndarray:
    """Inside-test of a superquadric with half-axes ``scale`` and shape exponents e1, e2."""
    q = (points - np.asarray(centre)) @ np.asarray(rotation)  # world -> object frame: R^T p
    x, y, z = (np.abs(q[..., i]) / scale[i] + 1e-12 for i in range(3))
    f = (x ** (2 / e2) + y ** (2 / e2)) ** (e2 / e1) + z ** (2 / e1)
    return f <= 1.0


def torus(points: np.ndarray, major: float, minor: float, rotation) -> np.ndarray:
    q = points @ np.asarray(rotation)
    ring = np.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2) - major
    return ring**2 + q[..., 2] ** 2 <= minor**2


def make_shape(family: str, rng: np.random.Generator, res: int) -> Shape:
    """One random closed shape of ``family`` that fits inside the unit cube."""
    pts = grid_points(res)
    rot = random_rotation(rng)
    if family == "superquadric":
        scale = rng.uniform(0.2, 0.45, size=3)
        e1, e2 = rng.uniform(0.3, 1.6, size=2)
        occ = superquadric(pts, scale, e1, e2, rot, (0, 0, 0))
        params = (*scale, e1, e2)
    elif family == "torus":
        major = rng.uniform(0.2, 0.3)
        minor = rng.uniform(0.07, min(0.16, 0.45 - major))
        occ = torus(pts, major, minor, rot)
        params = (major, minor)
    elif family == "compound":  # two overlapping superquadrics, e.g. a body and a handle
        s1, s2 = rng.uniform(0.12, 0.3, size=3), rng.uniform(0.08, 0.2, size=3)
        offset = rng.uniform(-0.12, 0.12, size=3)
        e = rng.uniform(0.3, 1.2, size=4)
        occ = superquadric(pts, s1, e[0], e[1], rot, -offset / 2) | superquadric(
            pts, s2, e[2], e[3], random_rotation(rng), offset / 2
        )
        params = (*s1, *s2, *offset, *e)
    else:
        raise ValueError(f"unknown shape family {family!r}; known: {', '.join(FAMILIES)}")
    return Shape(family, tuple(float(p) for p in params), occ)


def shape_for(seed: int, index: int, res: int) -> Shape:
    """The ``index``-th shape of a seeded collection: independent of how many are made."""
    rng = np.random.default_rng([seed, index])
    return make_shape(FAMILIES[index % len(FAMILIES)], rng, res)


def shape_samples(seed: int, count: int, res: int):
    """``(key, manifest row, files)`` for the first ``count`` shapes of a seeded collection,
    in the layout of :data:`flywheel.core.contracts.SHAPES`."""
    from flywheel.core.codecs import encode_npy

    for index in range(count):
        shape = shape_for(seed, index, res)
        object_id = f"shape-{seed}-{index:06d}"
        row = {
            "object_id": object_id,
            "family": shape.family,
            "params": list(shape.params),
            "resolution": res,
            "occupied_fraction": float(shape.occupancy.mean()),
            "seed": seed,
        }
        yield object_id, row, {"occ.npy": encode_npy(shape.occupancy)}
