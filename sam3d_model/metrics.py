"""Shape and layout metrics (numpy / scipy / trimesh), each tested on known cases.

Shapes are compared in the normalised object frame (the unit cube [-0.5, 0.5]³), so
thresholds such as F1@0.01 are fractions of the object's bounding-cube side.

Chamfer distance here is **not squared**: the mean, over both directions, of the
Euclidean distance to the nearest neighbour, CD = ½ (mean_p min_q |p-q| + mean_q min_p |q-p|);
``squared=True`` gives the squared-distance variant used by some papers.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.optimize import linear_sum_assignment, linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, cKDTree
from skimage.measure import marching_cubes

# -- occupancy --------------------------------------------------------------------------------


def voxel_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean grids of the same shape; two empty grids count as identical (1.0)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"voxel_iou: grid shapes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def occupancy_to_mesh(occupancy: np.ndarray, level: float = 0.5) -> trimesh.Trimesh:
    """Marching cubes on a (R, R, R) grid over the unit cube (voxel i's centre at
    (i + 0.5) / R - 0.5); padded so that shapes touching the border are closed."""
    grid = np.pad(np.asarray(occupancy, np.float32), 1)
    r = occupancy.shape[0]
    if grid.max() <= level or grid.min() >= level:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    verts, faces, _, _ = marching_cubes(grid, level=level)
    verts = (verts - 1 + 0.5) / r - 0.5
    return trimesh.Trimesh(verts, faces[:, ::-1], process=False)


def surface_points(shape: np.ndarray | trimesh.Trimesh, count: int = 2048, seed: int = 0) -> np.ndarray:
    """Points on the surface of a mesh or of an occupancy grid's marching-cubes mesh: (count, 3)
    (empty (0, 3) for an empty shape)."""
    mesh = shape if isinstance(shape, trimesh.Trimesh) else occupancy_to_mesh(shape)
    if len(mesh.faces) == 0:
        return np.zeros((0, 3))
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points)


# -- point sets -------------------------------------------------------------------------------


def _nearest(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each p to its nearest q, and from each q to its nearest p."""
    return cKDTree(q).query(p)[0], cKDTree(p).query(q)[0]


def chamfer_distance(p: np.ndarray, q: np.ndarray, squared: bool = False) -> float:
    """½ (mean_p min_q d + mean_q min_p d), d Euclidean (or squared); inf if a set is empty."""
    if len(p) == 0 or len(q) == 0:
        return float("inf")
    dp, dq = _nearest(p, q)
    if squared:
        dp, dq = dp**2, dq**2
    return float(0.5 * (dp.mean() + dq.mean()))


def f_score(p: np.ndarray, q: np.ndarray, threshold: float = 0.01) -> float:
    """F1 of precision (predicted points p within ``threshold`` of the truth q) and recall."""
    if len(p) == 0 or len(q) == 0:
        return 0.0
    dp, dq = _nearest(p, q)
    precision, recall = float((dp <= threshold).mean()), float((dq <= threshold).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def earth_movers_distance(p: np.ndarray, q: np.ndarray, count: int = 512, seed: int = 0) -> float:
    """Mean distance of the optimal one-to-one matching (Hungarian) between ``count`` points
    subsampled from each set (the exact EMD is cubic in the number of points)."""
    if len(p) == 0 or len(q) == 0:
        return float("inf")
    rng = np.random.default_rng(seed)
    n = min(count, len(p), len(q))
    a = p[rng.choice(len(p), n, replace=False)]
    b = q[rng.choice(len(q), n, replace=False)]
    cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


# -- layout -----------------------------------------------------------------------------------


def rotation_error_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Geodesic angle between two rotations, degrees."""
    cos = (np.trace(np.asarray(Ra).T @ np.asarray(Rb)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _halfspaces(center, rotation, size) -> np.ndarray:
    """Box as A x + b <= 0 rows [A | b] (scipy's HalfspaceIntersection convention)."""
    rows = []
    for axis in range(3):
        n = np.asarray(rotation)[:, axis]
        c = float(n @ np.asarray(center))
        h = float(size[axis]) / 2
        rows += [np.r_[n, -(c + h)], np.r_[-n, c - h]]
    return np.array(rows)


def box_iou_3d(box_a: tuple, box_b: tuple) -> float:
    """Exact IoU of two oriented boxes, each (center (3,), rotation (3, 3), size (3,)):
    intersection = the convex polytope of both boxes' half-spaces."""
    halfspaces = np.vstack([_halfspaces(*box_a), _halfspaces(*box_b)])
    # interior point: the centre of the largest ball inside both (Chebyshev centre, by LP)
    A, b = halfspaces[:, :3], halfspaces[:, 3]
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    lp = linprog(
        np.r_[0, 0, 0, -1.0],
        A_ub=np.hstack([A, norms]),
        b_ub=-b,
        bounds=[(None, None)] * 3 + [(0, None)],
        method="highs",
    )
    vol_a, vol_b = float(np.prod(box_a[2])), float(np.prod(box_b[2]))
    if not lp.success or lp.x[3] < 1e-9:
        return 0.0
    inter = ConvexHull(HalfspaceIntersection(halfspaces, lp.x[:3]).intersections).volume
    return float(inter / (vol_a + vol_b - inter))


def transform(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: float) -> np.ndarray:
    """p_cam = R @ (s p) + t for each row of ``points``."""
    return (scale * np.asarray(points)) @ np.asarray(rotation).T + np.asarray(translation)


def add_s(points: np.ndarray, pred_pose: tuple, true_pose: tuple) -> float:
    """ADD-S: mean over the true-pose points of the distance to the nearest predicted-pose
    point (symmetry-aware ADD). Poses are (R, t, s); points in the object frame."""
    p = transform(points, *pred_pose)
    q = transform(points, *true_pose)
    return float(cKDTree(p).query(q)[0].mean())


def add_s_accuracy(points: np.ndarray, pred_pose: tuple, true_pose: tuple, fraction: float = 0.1) -> bool:
    """ADD-S@0.1: ADD-S below ``fraction`` of the object's diameter under the true pose."""
    q = transform(points, *true_pose)
    diameter = float(np.linalg.norm(q.max(0) - q.min(0)))
    return add_s(points, pred_pose, true_pose) < fraction * diameter


def surface_distances(
    a: trimesh.Trimesh, b: trimesh.Trimesh, count: int = 4096, dense: int = 50_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from ``count`` points on each surface to the other surface, approximated by
    the nearest of ``dense`` points sampled on it (error about half their spacing, ~0.003
    on a unit-cube object at the default). Returns (a -> b, b -> a)."""
    if len(a.faces) == 0 or len(b.faces) == 0:
        return np.full(count, np.inf), np.full(count, np.inf)
    pa, pb = surface_points(a, count, seed), surface_points(b, count, seed + 1)
    da = cKDTree(surface_points(b, dense, seed + 2)).query(pa)[0]
    db = cKDTree(surface_points(a, dense, seed + 3)).query(pb)[0]
    return da, db


def shape_metrics(pred: np.ndarray, true: np.ndarray, count: int = 4096, seed: int = 0) -> dict[str, float]:
    """vIoU, F1@0.01 and Chamfer (not squared) between two occupancy grids of one object,
    surface to surface after marching cubes. An empty prediction scores 0 / 0 / inf."""
    da, db = surface_distances(occupancy_to_mesh(pred), occupancy_to_mesh(true), count, seed=seed)
    precision, recall = float((da <= 0.01).mean()), float((db <= 0.01).mean())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"viou": voxel_iou(pred, true), "f1@0.01": f1, "chamfer": float(0.5 * (da.mean() + db.mean()))}
