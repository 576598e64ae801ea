"""Shape and layout metrics on cases whose answer is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rendering.procedural_shapes import grid_points
from sam3d_model.metrics import (
    add_s,
    add_s_accuracy,
    box_iou_3d,
    chamfer_distance,
    earth_movers_distance,
    f_score,
    occupancy_to_mesh,
    rotation_error_deg,
    shape_metrics,
    voxel_iou,
)


def lattice(n=6, spacing=0.1):
    c = np.arange(n) * spacing
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


def ball(res=16, radius=0.35, centre=(0, 0, 0)):
    return np.linalg.norm(grid_points(res) - np.asarray(centre), axis=-1) <= radius


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
    assert same["viou"] == 1.0 and same["f1@0.01"] > 0.99 and same["chamfer"] < 0.005
    shifted = shape_metrics(a, np.roll(a, 2, axis=0))  # 2 cells = 0.125
    assert shifted["viou"] < 0.7 and shifted["f1@0.01"] < 0.5 and shifted["chamfer"] > 0.03
    empty = shape_metrics(np.zeros_like(a), a)
    assert empty["viou"] == 0.0 and empty["f1@0.01"] == 0.0 and empty["chamfer"] == float("inf")


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
