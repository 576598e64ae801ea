"""Shape and layout metrics on cases whose answer is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from rendering.procedural_shapes import grid_points
from sam3d_model.metrics import (
    add_s,
    add_s_accuracy,
    box_iou_3d,
    chamfer_distance,
    diameter,
    distances_to_surface,
    earth_movers_distance,
    f_score,
    icp_rotation_error_deg,
    occupancy_to_mesh,
    oriented_box_iou,
    rotation_error_deg,
    shape_metrics,
    surface_points,
    symmetric_rotation_error_deg,
    symmetries,
    voxel_iou,
)


def lattice(n=6, spacing=0.1):
    c = np.arange(n) * spacing
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


def ball(res=16, radius=0.35, centre=(0, 0, 0)):
    return np.linalg.norm(grid_points(res) - np.asarray(centre), axis=-1) <= radius


def test_distances_to_a_box_surface_are_exact():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))  # 12 triangles: every k covers them all
    inside_face = [0.5 + 0.2, 0.1, -0.2]  # 0.2 out in front of the +x face
    beyond_corner = [0.8, 0.9, 1.1]  # nearest to the corner (0.5, 0.5, 0.5)
    on_face = [0.5, 0.3, 0.0]
    inside = [0.0, 0.0, 0.4]  # 0.1 below the +z face
    d = distances_to_surface(box, np.array([inside_face, beyond_corner, on_face, inside]))
    np.testing.assert_allclose(d, [0.2, np.linalg.norm([0.3, 0.4, 0.6]), 0.0, 0.1], atol=1e-12)


def test_distances_to_a_fine_mesh_match_an_exhaustive_search():
    # a marching-cubes mesh of thousands of triangles: the nearest-centroid candidates must be
    # proven (or the exhaustive fall-back taken) for near, far and inside points alike
    mesh = occupancy_to_mesh(ball(radius=0.4) & ~ball(radius=0.2, centre=(0.2, 0, 0)))
    rng = np.random.default_rng(0)
    points = np.concatenate([surface_points(ball(radius=0.3), 300, seed=1), rng.uniform(-1, 1, (100, 3))])
    triangles = mesh.triangles
    exhaustive = [
        np.linalg.norm(
            trimesh.triangles.closest_point(triangles, np.repeat(p[None], len(triangles), 0)) - p, axis=1
        ).min()
        for p in points
    ]
    np.testing.assert_allclose(distances_to_surface(mesh, points), exhaustive, atol=1e-9)


def test_a_large_triangle_beyond_the_nearest_centroids_is_still_found():
    # thousands of small triangles (a ball) sit between the point and the centroid of one
    # large floor triangle, which is nonetheless the nearest surface
    ball_mesh = occupancy_to_mesh(ball(radius=0.4)).apply_translation([8.0, -9.0, 0.6])
    floor = trimesh.Trimesh([[-10.0, -10.0, 0.0], [10.0, -10.0, 0.0], [0.0, 10.0, 0.0]], [[0, 1, 2]])
    mesh = trimesh.util.concatenate([ball_mesh, floor])
    np.testing.assert_allclose(distances_to_surface(mesh, np.array([[8.0, -9.0, 0.05]])), [0.05], atol=1e-12)


def test_voxel_iou_known_cases():
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 cells
    b = np.zeros_like(a)
    b[1:3] = True  # 32 cells, 16 shared
    assert voxel_iou(a, a) == 1.0
    assert voxel_iou(a, b) == pytest.approx(16 / 48)
    assert voxel_iou(a, ~a) == 0.0
    assert voxel_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        voxel_iou(a, np.zeros((2, 2, 2), bool))


def test_point_metrics_of_a_known_offset():
    p = lattice()  # spacing 0.1, shift 0.02 << spacing: nearest = shifted twin
    q = p + np.array([0.02, 0.0, 0.0])
    assert chamfer_distance(p, p) == 0.0
    assert chamfer_distance(p, q) == pytest.approx(0.02)
    assert chamfer_distance(p, q, squared=True) == pytest.approx(0.0004)
    assert f_score(p, q, threshold=0.01) == 0.0
    assert f_score(p, q, threshold=0.03) == 1.0
    assert earth_movers_distance(p, q) == pytest.approx(0.02)  # 216 points: no subsampling
    assert earth_movers_distance(p, q, count=100) >= 0.02 - 1e-9  # a subsample cannot match better
    assert earth_movers_distance(p, p[::-1].copy()) == pytest.approx(0.0)
    assert chamfer_distance(p, np.zeros((0, 3))) == float("inf")


def test_f_score_counts_precision_and_recall():
    truth = lattice(4)  # 64 points
    pred = truth[:32]  # half of them: precision 1, recall 0.5
    assert f_score(pred, truth, 0.01) == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_shape_metrics_of_identical_and_shifted_balls():
    a = ball()
    same = shape_metrics(a, a)
    assert same["viou"] == 1.0 and same["f1"] == 1.0 and same["chamfer"] < 1e-9 and same["emd"] < 1e-9
    assert same["f1_unit_cube"] == 1.0 and same["chamfer_unit_cube"] < 1e-9
    shifted = shape_metrics(a, np.roll(a, 2, axis=0))  # 2 cells = 0.125 of the unit cube
    assert shifted["viou"] < 0.7 and shifted["f1_unit_cube"] < 0.5 and shifted["chamfer_unit_cube"] > 0.03
    # normalised to [-1, 1] each, a shifted copy is the same shape
    assert shifted["f1"] == 1.0 and shifted["chamfer"] < 1e-9
    empty = shape_metrics(np.zeros_like(a), a)
    assert empty["viou"] == 0.0 and empty["f1"] == 0.0 and empty["chamfer"] == float("inf")


def test_f1_is_measured_on_shapes_normalised_to_minus_one_one():
    # cubes of side 0.5 and 0.75 in the unit cube: the same shape once each spans [-1, 1]
    # (up to marching cubes' half-cell bevels), far apart without normalising
    grid = grid_points(16)
    small, large = (np.abs(grid) < 0.25).all(-1), (np.abs(grid) < 0.375).all(-1)
    m = shape_metrics(small, large)
    assert m["viou"] == pytest.approx(8**3 / 12**3)
    assert m["f1"] > 0.8 and m["chamfer"] < 0.02  # what is left: the bevels, 1/16 vs 1/24 of the side
    assert m["f1_unit_cube"] < 0.05 and m["chamfer_unit_cube"] > 0.1
    # the threshold is a fraction of half the longest side: points 0.008 apart on a shape of
    # side 2 count as matched, on the unit-cube reading of the same points (side 1) too
    p = lattice(6, 0.4) - 1.0  # spans [-1, 1]
    x = np.array([1.0, 0.0, 0.0])
    assert f_score(p + 0.008 * x, p, 0.01) == 1.0 and f_score(p + 0.012 * x, p, 0.01) == 0.0


def test_diameter_is_the_largest_distance_not_the_box_diagonal():
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], 1)  # radius 1
    assert diameter(ring) == pytest.approx(2.0)  # the bounding-box diagonal would be 2√2
    upright = (np.eye(3), np.zeros(3), 1.0)
    off = (np.eye(3), np.array([0.0, 0.0, 0.25]), 1.0)  # ADD-S exactly 0.25 (lifted out of its plane)
    assert add_s(ring, off, upright) == pytest.approx(0.25)
    assert not add_s_accuracy(ring, off, upright)  # 0.25 >= 0.1 x 2 (it was < 0.1 x 2√2 with the diagonal)
    assert add_s_accuracy(ring, (np.eye(3), np.array([0.0, 0.0, 0.15]), 1.0), upright)
    assert add_s_accuracy(ring, off, upright, size=4.0)


def test_rotation_error_knows_the_shapes_symmetries():
    grid = grid_points(16)
    brick = (np.abs(grid) <= np.array([0.4, 0.2, 0.1])).all(-1)  # three different sides
    cylinder = (np.linalg.norm(grid[..., :2], axis=-1) <= 0.3) & (np.abs(grid[..., 2]) <= 0.2)  # axis z
    turn = lambda axis, deg: Rotation.from_euler(axis, deg, degrees=True).as_matrix()  # noqa: E731
    brick_s = symmetries(surface_points(occupancy_to_mesh(brick), 20_000, seed=1))
    assert len(brick_s) == 4  # identity and the half turns about x, y, z
    assert symmetric_rotation_error_deg(turn("z", 180), np.eye(3), brick_s) == pytest.approx(0.0, abs=1e-6)
    assert symmetric_rotation_error_deg(turn("z", 90), np.eye(3), brick_s) == pytest.approx(90.0)
    assert rotation_error_deg(turn("z", 180), np.eye(3)) == pytest.approx(180.0)
    R = turn("xyz", [10, 20, 30])
    assert symmetric_rotation_error_deg(R @ turn("x", 180), R, brick_s) == pytest.approx(0.0, abs=1e-4)
    cyl_s = symmetries(surface_points(occupancy_to_mesh(cylinder), 20_000, seed=1))
    assert symmetric_rotation_error_deg(turn("z", 40), np.eye(3), cyl_s) == pytest.approx(5.0)  # nearest: 45
    assert symmetric_rotation_error_deg(turn("x", 40), np.eye(3), cyl_s) == pytest.approx(40.0)  # not about x


def test_icp_rotation_error_judges_the_posed_shape_not_the_frame():
    grid = grid_points(16)
    # an L: a bar along x with a post at +x, in no frame symmetric
    bar = (np.abs(grid - [0.0, 0.0, -0.1]) <= [0.3, 0.1, 0.1]).all(-1)
    ell = bar | (np.abs(grid - [0.25, 0.0, 0.1]) <= [0.05, 0.1, 0.2]).all(-1)
    turn = lambda axis, deg: Rotation.from_euler(axis, deg, degrees=True).as_matrix()  # noqa: E731
    truth = surface_points(occupancy_to_mesh(ell), 512, seed=1)
    shape_s = symmetries(surface_points(occupancy_to_mesh(ell), 20_000, seed=1))
    assert len(shape_s) == 1
    ours = surface_points(occupancy_to_mesh(ell), 512)  # the same shape, other surface samples
    R = turn("xyz", [20, -30, 50])
    for frame in (turn("z", 90), turn("x", 180), turn("y", -90)):  # the post on another side of its own frame
        # the predicted shape is the L turned by `frame`; its pose turns it back: the posed shape is right
        pred_R = R @ frame.T
        assert symmetric_rotation_error_deg(pred_R, R, shape_s) >= 89
        assert icp_rotation_error_deg(pred_R, ours @ frame.T, R, truth, shape_s) < 3  # the ICP's sampling floor
    # the truth's frame, posed 30° off: the error is the 30°
    assert icp_rotation_error_deg(R @ turn("y", 30), ours, R, truth, shape_s) == pytest.approx(30, abs=3)
    # a ball fits the L no better turned: its frame is kept, and ICP-Rot is the rotation error
    blob = surface_points(occupancy_to_mesh(ball()), 512)
    for off in (turn("z", 40), turn("x", 120)):
        plain = symmetric_rotation_error_deg(R @ off, R, shape_s)
        assert icp_rotation_error_deg(R @ off, blob, R, truth, shape_s) == pytest.approx(plain, abs=5)
    # nothing predicted: nothing to lay onto the truth
    empty = np.zeros((0, 3))
    assert icp_rotation_error_deg(R @ turn("z", 90), empty, R, truth, shape_s) == pytest.approx(90.0)


def test_oriented_box_iou_of_placed_shapes():
    grid = grid_points(16)
    cube = (np.abs(grid) < 0.25).all(-1)  # side 0.5 in the unit cube
    pose = (np.eye(3), np.array([0.0, 0.0, 2.5]), 2.0)  # side 1 in the camera frame
    assert oriented_box_iou(cube, pose, cube, pose) == pytest.approx(1.0)
    half_side = (np.eye(3), np.array([0.5, 0.0, 2.5]), 2.0)
    assert oriented_box_iou(cube, half_side, cube, pose) == pytest.approx(1 / 3)
    assert oriented_box_iou(cube, (np.eye(3), pose[1], 1.0), cube, pose) == pytest.approx(1 / 8)
    assert oriented_box_iou(np.zeros_like(cube), pose, cube, pose) == 0.0


def test_marching_cubes_mesh_is_closed_and_in_the_unit_cube():
    mesh = occupancy_to_mesh(ball(radius=0.4))
    assert mesh.is_watertight
    assert np.all(np.abs(mesh.vertices) <= 0.5)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.4**3, rel=0.1)
    touching = np.ones((8, 8, 8), bool)  # fills the cube: padded, so closed
    assert occupancy_to_mesh(touching).is_watertight


def test_box_iou_known_cases():
    eye, unit = np.eye(3), np.ones(3)
    assert box_iou_3d((np.zeros(3), eye, unit), (np.zeros(3), eye, unit)) == pytest.approx(1.0)
    # shifted by half a side along x: intersection 0.5, union 1.5
    assert box_iou_3d((np.zeros(3), eye, unit), (np.array([0.5, 0, 0]), eye, unit)) == pytest.approx(1 / 3)
    # a cube turned 90 degrees about z is the same cube
    r90 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    assert box_iou_3d((np.zeros(3), eye, unit), (np.zeros(3), r90, unit)) == pytest.approx(1.0)
    # a cube turned 45 degrees about z: intersection is a regular octagon prism, area 2(√2-1)
    r45 = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    inter = 2 * (np.sqrt(2) - 1)
    assert box_iou_3d((np.zeros(3), eye, unit), (np.zeros(3), r45, unit)) == pytest.approx(inter / (2 - inter))
    assert box_iou_3d((np.zeros(3), eye, unit), (np.array([3.0, 0, 0]), eye, unit)) == 0.0


def test_rotation_error_and_add_s():
    R = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    turn = Rotation.from_rotvec([0, 0, np.radians(30)]).as_matrix()
    assert rotation_error_deg(R, R) == pytest.approx(0.0, abs=1e-5)
    assert rotation_error_deg(R, turn @ R) == pytest.approx(30.0)
    points = lattice(5, 0.25) - 0.5  # spacing 0.25, inside the unit cube
    pose = (R, np.array([0.0, 0.0, 2.5]), 1.0)
    assert add_s(points, pose, pose) == 0.0
    off = (R, np.array([0.02, 0.0, 2.5]), 1.0)  # offset << spacing
    assert add_s(points, off, pose) == pytest.approx(0.02)
    assert add_s_accuracy(points, off, pose)
    # half a lattice step off on every axis: every point is 0.2165 from the nearest, > 0.1 x diameter (0.173)
    upright = (np.eye(3), np.array([0.0, 0.0, 2.5]), 1.0)
    half_off = (np.eye(3), np.array([0.125, 0.125, 2.625]), 1.0)
    assert add_s(points[(np.abs(points) < 0.3).all(1)], half_off, upright) == pytest.approx(np.sqrt(3) * 0.125)
    assert not add_s_accuracy(points, half_off, upright)
    # ADD-S is symmetry-aware: a cube lattice turned 90 degrees about an axis costs nothing
    quarter = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    assert add_s(points, (quarter, np.zeros(3), 1.0), (np.eye(3), np.zeros(3), 1.0)) == pytest.approx(0.0, abs=1e-9)
