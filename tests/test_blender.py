"""Real Blender renders (tiny): geometry checks against analytic answers, and the
persistent worker's behaviour on timeouts, crashes, bad jobs and recycling."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import trimesh

from rendering.iso3do import iso3do_scene
from rendering.meshes import CleanMesh, clean, procedural_mesh
from rendering.occlusions import OCCLUDEE, OCCLUDER
from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at
from rendering.workers import BlenderWorker, JobFailed, RenderTimeout, WorkerCrashed

pytestmark = pytest.mark.slow
IDENTITY = np.eye(3).tolist()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with BlenderWorker(tmp_path_factory.mktemp("logs"), cores=[0]) as w:
        yield w


def write_mesh(path: Path, mesh: trimesh.Trimesh) -> str:
    c = clean(mesh)
    path.write_bytes(c.to_npz())
    return str(path)


def render(worker, scene: Scene, out: Path) -> list[dict]:
    return worker.run("rendering.iso3do:render_job", {"scene": scene.to_dict(), "out_dir": str(out)}, timeout=120)


def test_depth_of_a_sphere_matches_the_analytic_value(worker, tmp_path):
    mesh = write_mesh(tmp_path / "sphere.npz", trimesh.creation.icosphere(subdivisions=5))
    res, eye = 64, np.array([0.4, -2.5, 0.8])
    cam = Camera(intrinsics(35, res, res), look_at(eye), res, res)
    scene = Scene(
        [cam],
        [SceneObject("sphere", mesh, IDENTITY, [0, 0, 0], 1.0, 1)],
        [],
        settings=RenderSettings(samples=1, max_bounces=0),
    )
    render(worker, scene, tmp_path / "out")
    depth = np.load(tmp_path / "out" / "v000_depth.npy")
    mask = np.load(tmp_path / "out" / "v000_index.npy") == 1
    w2c = np.asarray(cam.world_to_cam)
    centre = w2c[:3, 3]  # sphere centre in camera frame
    v, u = np.mgrid[0:res, 0:res] + 0.5
    d = np.stack([(u - res / 2) / cam.fx, (v - res / 2) / cam.fx, np.ones_like(u)], -1)
    b = d @ centre
    disc = b**2 - (d * d).sum(-1) * (centre @ centre - 0.25)
    hit = disc > 0
    analytic = np.where(hit, (b - np.sqrt(np.where(hit, disc, 0))) / (d * d).sum(-1), 0)
    inner = hit & (disc > 0.02)  # away from the grazing silhouette
    assert mask.sum() == pytest.approx(hit.sum(), rel=0.05)
    assert np.abs(depth[inner] - analytic[inner]).max() < 0.01
    assert (depth[~mask] == 0).all() and (depth[mask] > 0).all()


@pytest.mark.parametrize("index", [1, 4])  # torus, capsule: no tips thinner than a pixel
def test_projected_vertices_land_inside_the_mask(worker, tmp_path, index):
    from scipy.ndimage import binary_dilation

    mesh, _ = procedural_mesh(0, index)
    path = write_mesh(tmp_path / "obj.npz", mesh)
    vertices = CleanMesh.from_npz(Path(path).read_bytes()).vertices.astype(np.float64)
    scene = iso3do_scene(
        path, np.random.default_rng(0), views=4, resolution=48, samples=1, fov_deg=40, camera_distance=2.7
    )
    views = render(worker, scene, tmp_path / "out")
    assert len(views) == 4
    for view, cam in zip(views, scene.cameras):
        mask = np.load(tmp_path / "out" / view["files"]["index"]) == 1
        R, t, s = scene.objects[0].pose_in_camera(cam)  # the stored pose, not the extrinsics
        cam_pts = (R @ (s * vertices).T).T + t
        uv = cam_pts @ np.asarray(cam.K).T
        uv = uv[:, :2] / uv[:, 2:]
        col, row = np.floor(uv).astype(int).T
        assert ((col >= 0) & (col < 48) & (row >= 0) & (row < 48)).all()
        # Within a pixel of the silhouette (a 1-sample render can miss a grazing edge's pixel);
        # a wrong pose or camera conversion misses by many pixels.
        assert binary_dilation(mask)[row, col].all()


def test_a_constructed_occlusion_gives_the_expected_visible_fraction(worker, tmp_path):
    plate = write_mesh(tmp_path / "plate.npz", trimesh.creation.box(extents=(1, 1, 0.02)))
    cam = Camera(intrinsics(40, 128, 128), np.eye(4).tolist(), 128, 128)
    occludee = SceneObject("occludee", plate, IDENTITY, [0, 0, 3.0], 1.0, OCCLUDEE)
    # 1 unit wide at depth 2, right edge on the optical axis: hides the occludee's left half.
    occluder = SceneObject("occluder", plate, IDENTITY, [-0.5, 0, 2.0], 1.0, OCCLUDER)
    vis = worker.run(
        "rendering.occlusions:measure_job",
        {
            "occludee": occludee.__dict__,
            "occluder": occluder.__dict__,
            "camera": cam.__dict__,
            "out_dir": str(tmp_path / "vis"),
        },
        timeout=60,
    )
    assert vis["visible_fraction"] == pytest.approx(0.5, abs=0.04)
    assert vis["overlap_px"] == pytest.approx(vis["amodal_px"] / 2, rel=0.1)
    free = SceneObject("occluder", plate, IDENTITY, [3.0, 0, 2.0], 1.0, OCCLUDER)  # off to the side
    vis = worker.run(
        "rendering.occlusions:measure_job",
        {
            "occludee": occludee.__dict__,
            "occluder": free.__dict__,
            "camera": cam.__dict__,
            "out_dir": str(tmp_path / "vis2"),
        },
        timeout=60,
    )
    assert vis["visible_fraction"] == 1.0 and vis["overlap_px"] == 0


def test_an_accepted_composites_amodal_mask_is_its_own_layouts(worker, tmp_path):
    """The amodal mask a composite keeps is the accepted layout's occludee with the occluder
    hidden (not an earlier, rejected try's), and its modal mask lies inside it."""
    a = write_mesh(tmp_path / "a.npz", procedural_mesh(0, 1)[0])
    b = write_mesh(tmp_path / "b.npz", procedural_mesh(0, 4)[0])
    settings = dict(resolution=64, samples=1, fov_deg=50, max_tries=30, min_occludee_pixels=20)
    out = tmp_path / "fo"
    result = worker.run(
        "rendering.occlusions:occlusion_job",
        {
            "occludee_mesh": a,
            "occluder_mesh": b,
            "seed": 3,
            "out_dir": str(out),
            "visible_band": [0.5, 0.6],
            **settings,
        },
        timeout=120,
    )
    assert result["accepted"] and result["tries"] > 1  # rejected tries came first
    amodal = np.load(out / "amodal" / "v000_index.npy") == OCCLUDEE
    modal = np.load(out / result["files"]["index"]) == OCCLUDEE
    assert modal.sum() and not (modal & ~amodal).any()
    assert modal.sum() / amodal.sum() == pytest.approx(result["visible_fraction"])

    def placed(name, mesh, pose, index, visible=True):
        return SceneObject(name, mesh, pose["R"], pose["t"], pose["s"], index, visible=visible)

    hidden = Scene(
        [Camera(result["K"], np.eye(4).tolist(), 64, 64)],
        [
            placed("occludee", a, result["occludee"], OCCLUDEE),
            placed("occluder", b, result["occluder"], OCCLUDER, visible=False),
        ],
        [],
        settings=RenderSettings(samples=1, max_bounces=0, passes=("index",)),
    )
    render(worker, hidden, tmp_path / "again")
    assert np.array_equal(np.load(tmp_path / "again" / "v000_index.npy") == OCCLUDEE, amodal)


def _slow_scene(tmp_path) -> dict:
    mesh = write_mesh(tmp_path / "slow.npz", trimesh.creation.icosphere(subdivisions=4))
    cams = [
        Camera(intrinsics(40, 256, 256), look_at(eye), 256, 256)
        for eye in [(0, -3, 1), (3, 0, 1), (0, 3, 1), (-3, 0, 1)] * 3
    ]
    return Scene(
        cams, [SceneObject("s", mesh, IDENTITY, [0, 0, 0], 1.0, 1)], [], settings=RenderSettings(samples=256)
    ).to_dict()


def test_worker_survives_bad_jobs_timeouts_and_crashes(tmp_path):
    tiny = Scene(
        [Camera(intrinsics(40, 8, 8), look_at((0, -3, 0)), 8, 8)],
        [SceneObject("s", write_mesh(tmp_path / "s.npz", trimesh.creation.icosphere()), IDENTITY, [0, 0, 0], 1.0, 1)],
        [],
        settings=RenderSettings(samples=1),
    ).to_dict()
    with BlenderWorker(tmp_path / "logs", cores=[0], recycle_after=100) as w:
        w.run("rendering.iso3do:render_job", {"scene": tiny, "out_dir": str(tmp_path / "a")}, timeout=60)
        pid = w.pid
        broken = {**tiny, "objects": [{**tiny["objects"][0], "mesh_path": str(tmp_path / "missing.npz")}]}
        with pytest.raises(JobFailed, match="missing.npz"):
            w.run("rendering.iso3do:render_job", {"scene": broken, "out_dir": str(tmp_path / "b")}, timeout=60)
        assert w.pid == pid  # a failed job does not cost the worker
        with pytest.raises(JobFailed, match="outside rendering"):
            w.run("os:system", {"command": "true"}, timeout=10)

        with pytest.raises(RenderTimeout, match="within 1 s"):
            w.run(
                "rendering.iso3do:render_job",
                {"scene": _slow_scene(tmp_path), "out_dir": str(tmp_path / "c")},
                timeout=1,
            )
        assert w.pid is None  # killed ...
        w.run("rendering.iso3do:render_job", {"scene": tiny, "out_dir": str(tmp_path / "d")}, timeout=60)
        assert w.pid not in (None, pid)  # ... and restarted on the next job

        victim = w.pid
        threading.Timer(2.0, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(WorkerCrashed, match="died") as crash:
            w.run(
                "rendering.iso3do:render_job",
                {"scene": _slow_scene(tmp_path), "out_dir": str(tmp_path / "e")},
                timeout=120,
            )
        assert "last log lines" in str(crash.value)
        w.run("rendering.iso3do:render_job", {"scene": tiny, "out_dir": str(tmp_path / "f")}, timeout=60)
        assert w.starts == 3
    log = (tmp_path / "logs" / f"{w.name}.log").read_text()
    assert "Saved:" in log and "FileNotFoundError" in log  # Blender's own output is kept


def test_worker_is_pinned_and_recycled(tmp_path):
    tiny = Scene(
        [Camera(intrinsics(40, 8, 8), look_at((0, -3, 0)), 8, 8)],
        [SceneObject("s", write_mesh(tmp_path / "s.npz", trimesh.creation.icosphere()), IDENTITY, [0, 0, 0], 1.0, 1)],
        [],
        settings=RenderSettings(samples=1),
    ).to_dict()
    with BlenderWorker(tmp_path / "logs", cores=[1 % os.cpu_count()], recycle_after=2) as w:
        pids = []
        for i in range(5):
            w.run("rendering.iso3do:render_job", {"scene": tiny, "out_dir": str(tmp_path / str(i))}, timeout=60)
            pids.append(w.pid)
        assert os.sched_getaffinity(w.pid) == {1 % os.cpu_count()}
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
