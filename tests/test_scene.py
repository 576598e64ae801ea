"""Scene sampling and geometry conventions, without Blender."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rendering.iso3do import iso3do_scene
from rendering.occlusions import OCCLUDEE, OCCLUDER, PoseRange, composite, object_rotation, sample_layout
from rendering.scene import Camera, Scene, intrinsics, look_at, random_lights, viewpoints


def test_look_at_is_an_opencv_camera():
    eye = np.array([0.0, -3.0, 1.0])
    cam = Camera(intrinsics(40, 100, 80), look_at(eye), 100, 80)
    w2c = np.asarray(cam.world_to_cam)
    assert np.allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3)) and np.isclose(np.linalg.det(w2c[:3, :3]), 1)
    assert np.allclose(w2c[:3, :3] @ eye + w2c[:3, 3], 0)  # camera centre
    assert np.allclose(cam.project(np.zeros((1, 3))), [[50, 40]])  # target at the centre
    above, right = cam.project(np.array([[0, 0, 0.3], [0.3, 0, 0]]))
    assert above[1] < 40 and np.isclose(above[0], 50)  # world up = image up (y down)
    assert right[0] > 50  # world +x to the right here
    # Blender's camera looks down its local -z with y up: the conversion flips y and z.
    m = cam.blender_matrix_world()
    assert np.allclose(m[:3, 3], eye)
    assert np.allclose(m[:3, :3] @ [0, 0, -1], -eye / np.linalg.norm(eye))


def test_intrinsics_field_of_view():
    K = np.asarray(intrinsics(90, 200, 100))
    assert np.isclose(K[0, 0], 100) and K[0, 2] == 100 and K[1, 2] == 50


def test_viewpoints_cover_the_band_evenly():
    rng = np.random.default_rng(0)
    pts = viewpoints(24, rng, 2.5, (-10, 60))
    assert np.allclose(np.linalg.norm(pts, axis=1), 2.5)
    elevation = np.degrees(np.arcsin(pts[:, 2] / 2.5))
    assert elevation.min() >= -10 and elevation.max() <= 60
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(24) * 99
    assert d.min() > 0.5  # no two views bunched together (a Fibonacci lattice, not random)
    assert not np.allclose(pts, viewpoints(24, np.random.default_rng(1), 2.5, (-10, 60)))


def test_random_lights_are_varied_and_sane():
    rng = np.random.default_rng(3)
    kinds, counts = set(), set()
    for _ in range(40):
        lights, env = random_lights(rng)
        counts.add(len(lights))
        kinds |= {lt.kind for lt in lights}
        assert 0.1 <= env <= 0.8
        assert all(lt.location[2] > 0 and 0 < min(lt.color) <= max(lt.color) <= 1 for lt in lights)
    assert kinds == {"POINT", "SUN", "AREA", "SPOT"} and counts == {1, 2, 3}


def test_iso3do_pose_in_camera_frame_maps_points_like_the_camera():
    scene = iso3do_scene(
        "m.npz", np.random.default_rng(0), views=3, resolution=64, samples=4, fov_deg=40, camera_distance=2.7
    )
    p = np.random.default_rng(1).uniform(-0.5, 0.5, size=(10, 3))
    for cam in scene.cameras:
        R, t, s = scene.objects[0].pose_in_camera(cam)
        w2c = np.asarray(cam.world_to_cam)
        assert np.allclose((R @ (s * p).T).T + t, p @ w2c[:3, :3].T + w2c[:3, 3])
    assert Scene.from_dict(scene.to_dict()) == scene  # the worker gets exactly this scene


def test_occlusion_layout_puts_the_occluder_in_front():
    rng = np.random.default_rng(0)
    for _ in range(50):
        layout = sample_layout(rng, "a.npz", "b.npz", 50)
        far, near = np.asarray(layout.occludee.translation), np.asarray(layout.occluder.translation)
        assert 2.5 <= far[2] <= 4.0 and 1.4 <= near[2] < far[2] - 0.5
        half = math.tan(math.radians(25))
        assert abs(far[0] / far[2]) < half and abs(far[1] / far[2]) < half  # inside the frustum
        assert layout.occludee.pass_index == OCCLUDEE and layout.occluder.pass_index == OCCLUDER


def test_occludees_stand_upright_within_the_pose_range_and_tumble_at_its_share():
    rng = np.random.default_rng(1)
    pose = PoseRange(elevation_deg=(0.0, 40.0), max_tilt_deg=10.0, tumble_share=0.0)
    for _ in range(200):
        R = object_rotation(rng, pose)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
        up = R @ [0.0, 0.0, 1.0]  # the object's up axis in the camera frame (OpenCV: image-up is -y)
        # it leans back (seen from above) by at most the elevation, sideways by at most the tilt
        assert math.degrees(math.acos(-up[1])) <= 40.0 + 10.0 + 1e-6
        assert math.degrees(math.asin(abs(up[0]))) <= 10.0 + 1e-6
    ups = [object_rotation(rng, PoseRange(tumble_share=1.0)) @ [0, 0, 1.0] for _ in range(400)]
    assert np.mean([u[1] > 0 for u in ups]) == pytest.approx(0.5, abs=0.1)  # any way up, as often down


def test_composite_is_alpha_over():
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    bg = np.full((1, 3, 3), 100, dtype=np.uint8)
    out = composite(rgba, bg)
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [100, 100, 100]
    assert out[0, 2].tolist() == pytest.approx([50, 50, 178], abs=1)
