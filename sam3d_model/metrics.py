"""Shape and layout metrics (numpy / scipy / trimesh), each tested on closed-form cases.

Conventions — the one place they are written down:

* **Frames.** Occupancy grids index (x, y, z) over the unit cube [-0.5, 0.5]³ of the object's
  normalised frame; a pose maps it to the camera frame by p_cam = R·(s p) + t (DESIGN.md §3).
* **vIoU** — intersection over union of the two occupancy grids in the normalised frame
  (both at the model's resolution; empty vs empty counts as 1).
* **F1@0.01, Chamfer, EMD** — between points sampled on the two surfaces (marching cubes of
  the grids), each shape first **normalised to [-1, 1] on its own**: its bounding box is
  centred at the origin and its longest side scaled to 2 (the SAM 3D papers' convention). A
  threshold or a distance is therefore a fraction of *half* the shape's longest side:
  F1@0.01 here equals F1@0.005 in the unit cube. Chamfer is **not squared**:
  CD = ½ (mean_p min_q |p-q| + mean_q min_p |q-p|) (``squared=True`` for the squared variant);
  EMD is the mean matched distance of the optimal one-to-one matching of equal-size subsamples.
  The unit-cube variants that earlier rounds reported are kept as ``f1_unit_cube`` and
  ``chamfer_unit_cube`` (no per-shape normalisation; 0.01 = 1 % of the cube side).
* **ADD-S** — symmetric average distance: the mean, over the true shape's surface points
  under the true pose, of the distance to the nearest of the same points under the predicted
  pose, **divided by the object's diameter** (the largest distance between two of its points,
  in the camera frame). **ADD-S@0.1**: that ratio below 0.1.
* **Rotation error** — the geodesic angle between R_pred and R_true·S, minimised over the
  true shape's symmetries S (:func:`symmetries`): a cube turned 90° or a cylinder turned about
  its axis has no error. ``rotation_error_deg_plain`` is the angle without symmetries.
* **ICP-Rot** (``icp_rotation_error_deg``; SAM 3D's layout metric for predicted shapes whose
  own frame need not be the truth's) — the predicted shape is first laid onto the true one
  (rigid ICP from the identity and from the cube's best turns, :func:`align_shapes`; a turn
  must fit > 5 % better than keeping the frame), then the rotation error above is taken of
  the rotation by which the prediction turns the *true* shape. It asks whether the *posed
  shape* is oriented right, not whether the model chose the truth's frame: a prediction in
  another frame with a matching pose scores 0; a shape that no turn fits better (a blob)
  keeps its frame and scores the rotation error. What we read of the paper does not give
  the ICP's starts or ties; ours are these.
* **3D IoU** — exact IoU of the two *oriented* boxes: each shape's occupied bounding box in
  its normalised frame, placed by its pose.
"""

from __future__ import annotations

from functools import lru_cache
from math import inf

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
    return _f1(*_nearest(p, q), threshold)


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


def _axis_rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@lru_cache(maxsize=4)
def candidate_symmetries(steps: int = 24) -> np.ndarray:
    """Rotations tried as symmetries: the cube's 24 and turns by 360°/``steps`` about each axis
    of the normalised frame (a body of revolution about another axis is not recognised)."""
    cube = list(cube_rotations())
    turns = [_axis_rotation(a, 2 * np.pi * k / steps) for a in range(3) for k in range(1, steps)]
    unique: list[np.ndarray] = []
    for r in cube + turns:
        if not any(np.allclose(r, u) for u in unique):
            unique.append(r)
    return np.stack(unique)


@lru_cache(maxsize=1)
def cube_rotations() -> np.ndarray:
    """The cube's 24 rotations (24, 3, 3), the identity first."""
    rotations = np.stack([r for r in _signed_permutations() if np.linalg.det(r) > 0])
    rotations.flags.writeable = False  # shared by every caller
    return rotations


def _signed_permutations() -> list[np.ndarray]:
    out = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in np.ndindex(2, 2, 2):
            r = np.zeros((3, 3))
            r[range(3), perm] = np.where(np.array(signs) == 1, -1.0, 1.0)
            out.append(r)
    return out


def symmetries(surface: np.ndarray, tolerance: float = 0.03, candidates: np.ndarray | None = None) -> np.ndarray:
    """The rotations S (k, 3, 3) that map a shape onto itself, from dense points on its surface
    (n, 3; normalised frame, unit cube; 20k points put the sampling floor near 0.004): 95% of
    512 of them, rotated by S, lie within ``tolerance`` (a fraction of the cube side; the
    default, half a cell at 16³, absorbs the voxelisation of round shapes) of the surface.
    Always contains the identity first."""
    pts = np.asarray(surface, float)
    candidates = candidate_symmetries() if candidates is None else candidates
    kept = [np.eye(3)]
    if len(pts):
        tree = cKDTree(pts)
        probes = pts[:: max(1, len(pts) // 512)]
        kept += [
            r
            for r in candidates
            if not np.allclose(r, np.eye(3))
            # bounded: points farther than the tolerance count as inf, and far ones are the costly queries
            and (tree.query(probes @ r.T, distance_upper_bound=2 * tolerance)[0] <= tolerance).mean() >= 0.95
        ]
    return np.stack(kept)


def symmetric_rotation_error_deg(R_pred: np.ndarray, R_true: np.ndarray, shape_symmetries: np.ndarray) -> float:
    """Smallest geodesic angle between R_pred and R_true·S over the true shape's symmetries S."""
    return min(rotation_error_deg(R_pred, np.asarray(R_true) @ S) for S in shape_symmetries)


def _kabsch(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rotation A and translation b that best map the rows of p onto those of q (least squares)."""
    mp, mq = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - mp).T @ (q - mq))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    A = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return A, mq - mp @ A.T


def _icp(
    source: np.ndarray, target: np.ndarray, trees: tuple[cKDTree, cKDTree], A: np.ndarray, iterations: int, turn: bool
) -> tuple[float, np.ndarray]:
    """Point-to-point ICP from rotation A (centroid on centroid), nearest neighbours taken
    both ways (which keeps a box from settling a few degrees off); ``turn=False`` moves the
    shape without turning it. ``trees``: of source and target, built once (a rigid motion
    keeps distances, so the target is moved back instead of the source's tree rebuilt).
    Returns (Chamfer distance of the fit, A)."""
    source_tree, target_tree = trees

    def nearest(A, b):  # (distance, index) of each source point's nearest target point, and back
        return target_tree.query(source @ A.T + b), source_tree.query((target - b) @ A)

    b = target.mean(0) - source.mean(0) @ A.T
    for _ in range(iterations):
        (_, to_target), (_, to_source) = nearest(A, b)
        p, q = np.vstack([source, source[to_source]]), np.vstack([target[to_target], target])
        A_new, b_new = _kabsch(p, q) if turn else (A, (q - p @ A.T).mean(0))
        converged = np.abs(A_new - A).max() < 1e-4 and np.abs(b_new - b).max() < 1e-5
        A, b = A_new, b_new
        if converged:
            break
    (d_st, _), (d_ts, _) = nearest(A, b)
    return 0.5 * (d_st.mean() + d_ts.mean()), A


def align_shapes(
    source: np.ndarray, target: np.ndarray, tie: float = 0.05, iterations: int = 10, refine: int = 2
) -> np.ndarray:
    """The rotation A (3, 3) that lays a shape's surface points ``source`` (n, 3) best onto
    another's, ``target`` (m, 3) (both normalised frames, unit cube): rigid ICP with
    translation from the identity and from the ``refine`` best of the cube's 24 turns,
    scored by Chamfer distance. A turn must fit more than ``tie`` (5 %) better than the
    shape moved but not turned: a shape that fits about as well in its own frame (a blob, a
    near-symmetric shape) keeps it, and of the turns within ``tie`` of the best the smallest
    wins. The identity if a set is empty."""
    if len(source) == 0 or len(target) == 0:
        return np.eye(3)
    trees = cKDTree(source), cKDTree(target)
    starts = cube_rotations()  # the identity first
    # the turns worth refining, by how far the turned shape's points lie from the target (one way: cheap)
    first = [trees[1].query(source @ r.T + (target.mean(0) - source.mean(0) @ r.T))[0].mean() for r in starts]
    fits = [_icp(source, target, trees, np.eye(3), iterations, turn=False)]
    fits += [
        _icp(source, target, trees, starts[i], iterations, turn=True) for i in sorted({0, *np.argsort(first)[:refine]})
    ]
    best = min(chamfer for chamfer, _ in fits)
    return min(
        (A for chamfer, A in fits if chamfer <= best * (1 + tie)), key=lambda A: rotation_error_deg(A, np.eye(3))
    )


def icp_rotation_error_deg(
    R_pred: np.ndarray,
    pred_points: np.ndarray,
    R_true: np.ndarray,
    true_points: np.ndarray,
    shape_symmetries: np.ndarray,
) -> float:
    """ICP-Rot (SAM 3D's layout metric for shapes whose canonical frames need not agree): the
    predicted shape (``pred_points``, its surface in its own normalised frame) is first laid
    onto the true one by :func:`align_shapes` (A: A·p ≈ q), so the prediction turns the *true*
    shape by R_pred·Aᵀ; the error is that rotation's symmetry-aware angle to R_true. A
    prediction whose posed shape is right scores 0 whichever way its own frame points."""
    A = align_shapes(np.asarray(pred_points, float), np.asarray(true_points, float))
    return symmetric_rotation_error_deg(np.asarray(R_pred) @ A.T, R_true, shape_symmetries)


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
    """ADD-S in camera units: mean over the true-pose points of the distance to the nearest
    predicted-pose point (symmetry-aware ADD). Poses are (R, t, s); points in the object frame."""
    p = transform(points, *pred_pose)
    q = transform(points, *true_pose)
    return float(cKDTree(p).query(q)[0].mean())


def diameter(points: np.ndarray) -> float:
    """The largest distance between two of ``points`` (over their convex hull's vertices)."""
    pts = np.asarray(points, float)
    if len(pts) < 2:
        return 0.0
    try:
        pts = pts[ConvexHull(pts).vertices]
    except Exception:  # flat or degenerate sets: every point is a candidate
        pass
    return float(np.max(np.linalg.norm(pts[:, None] - pts[None], axis=-1)))


def add_s_accuracy(
    points: np.ndarray, pred_pose: tuple, true_pose: tuple, fraction: float = 0.1, size: float | None = None
) -> bool:
    """ADD-S@0.1: ADD-S below ``fraction`` of the object's diameter under the true pose
    (``size``; default: the diameter of ``points`` under it)."""
    size = diameter(transform(points, *true_pose)) if size is None else size
    return add_s(points, pred_pose, true_pose) < fraction * size


def occupied_box(occupancy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre (3,), size (3,)) of the occupied cells' bounding box in the normalised frame
    (zeros for an empty grid)."""
    occ = np.asarray(occupancy, bool)
    if not occ.any():
        return np.zeros(3), np.zeros(3)
    r = occ.shape[0]
    idx = np.argwhere(occ)
    lo, hi = idx.min(0) / r - 0.5, (idx.max(0) + 1) / r - 0.5
    return (lo + hi) / 2, hi - lo


def oriented_box_iou(pred_occ: np.ndarray, pred_pose: tuple, true_occ: np.ndarray, true_pose: tuple) -> float:
    """3D IoU of the two shapes' oriented boxes in the camera frame (each its occupied box,
    placed by its pose (R, t, s)); 0 when either shape is empty."""
    boxes = []
    for occ, (R, t, s) in ((pred_occ, pred_pose), (true_occ, true_pose)):
        centre, size = occupied_box(occ)
        if not size.all():
            return 0.0
        boxes.append((transform(centre[None], R, t, s)[0], np.asarray(R), s * size))
    return box_iou_3d(boxes[0], boxes[1])


def surface_distances(
    a: trimesh.Trimesh, b: trimesh.Trimesh, count: int = 4096, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances from ``count`` points sampled on each surface to the other surface
    (closest point on its triangles, not on a sample of it: a threshold like F1@0.01 must
    not be swamped by sampling error). Returns (a -> b, b -> a)."""
    if len(a.faces) == 0 or len(b.faces) == 0:
        return np.full(count, np.inf), np.full(count, np.inf)
    pa, pb = surface_points(a, count, seed), surface_points(b, count, seed + 1)
    return distances_to_surface(b, pa), distances_to_surface(a, pb)


def distances_to_surface(
    mesh: trimesh.Trimesh, points: np.ndarray, candidates: tuple[int, ...] = (24, 96)
) -> np.ndarray:
    """Exact distance from each point (N, 3) to the closest point on ``mesh``'s triangles: (N,).

    Each point is tested, all points at once, against the k triangles with the nearest
    centroids; its answer is proven exact when the k-th nearest centroid, less the largest
    centroid-to-corner radius, is no nearer than the best distance found (no other triangle
    can come closer). Unproven points try the next, larger k, and the last few go to
    trimesh's exhaustive search (one R-tree query per point; `bench/evaluation.py` compares the two)."""
    triangles = mesh.triangles
    centroids = triangles.mean(1)
    radius = float(np.linalg.norm(triangles - centroids[:, None], axis=-1).max())
    tree = cKDTree(centroids)
    best = np.full(len(points), np.inf)
    todo = np.arange(len(points))
    for k in (min(c, len(triangles)) for c in candidates):
        centre_dist, index = tree.query(points[todo], k=k)
        centre_dist, index = centre_dist.reshape(len(todo), k), index.reshape(len(todo), k)
        repeated = np.repeat(points[todo], k, axis=0)
        closest = trimesh.triangles.closest_point(triangles[index.ravel()], repeated)
        best[todo] = np.linalg.norm(closest - repeated, axis=1).reshape(len(todo), k).min(1)
        proven = (centre_dist[:, -1] - radius >= best[todo]) | (k == len(triangles))
        todo = todo[~proven]
        if not len(todo):
            return best
    best[todo] = trimesh.proximity.closest_point(mesh, points[todo])[1]
    return best


def shape_metrics(
    pred: np.ndarray, true: np.ndarray, count: int = 4096, emd_count: int = 256, seed: int = 0
) -> dict[str, float]:
    """Shape metrics between two occupancy grids of one object (module docstring): ``viou``;
    ``f1`` (F1@0.01), ``chamfer`` and ``emd`` on surfaces normalised to [-1, 1] each; and the
    unit-cube ``f1_unit_cube`` (@0.01) and ``chamfer_unit_cube``. An empty prediction scores
    0 for F1 and inf for the distances."""
    pred_mesh, true_mesh = occupancy_to_mesh(pred), occupancy_to_mesh(true)
    out = {"viou": voxel_iou(pred, true)}
    if len(pred_mesh.faces) == 0 or len(true_mesh.faces) == 0:
        return {**out, "f1": 0.0, "chamfer": inf, "emd": inf, "f1_unit_cube": 0.0, "chamfer_unit_cube": inf}
    da, db = surface_distances(pred_mesh, true_mesh, count, seed=seed)
    out["f1_unit_cube"] = _f1(da, db, 0.01)
    out["chamfer_unit_cube"] = float(0.5 * (da.mean() + db.mean()))
    unit_pred, unit_true = _to_unit(pred_mesh), _to_unit(true_mesh)
    da, db = surface_distances(unit_pred, unit_true, count, seed=seed)
    out["f1"] = _f1(da, db, 0.01)
    out["chamfer"] = float(0.5 * (da.mean() + db.mean()))
    # the same sampling seed on both: identical shapes match exactly (EMD 0); between different
    # shapes, subsampling adds a floor of about half the points' spacing
    out["emd"] = earth_movers_distance(
        surface_points(unit_pred, emd_count, seed + 4), surface_points(unit_true, emd_count, seed + 4), emd_count
    )
    return out


def _to_unit(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy with its bounding box centred at the origin and its longest side spanning [-1, 1]."""
    unit = mesh.copy().apply_translation(-mesh.bounds.mean(0))
    return unit.apply_scale(2 / float(np.ptp(mesh.bounds, axis=0).max()))


def _f1(da: np.ndarray, db: np.ndarray, threshold: float) -> float:
    precision, recall = float((da <= threshold).mean()), float((db <= threshold).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
