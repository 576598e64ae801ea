"""The Ray actor pool of Blender workers: real Ray (local), real Blender."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import trimesh

from rendering.meshes import clean
from rendering.pool import Job, RenderPool
from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at

pytestmark = pytest.mark.slow


def _job(job_id, mesh, out, res=16, samples=1, views=1):
    cams = [Camera(intrinsics(40, res, res), look_at((0, -3, 0.5)), res, res)] * views
    scene = Scene(cams, [SceneObject("s", mesh, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0], 1.0, 1)], [],
                  settings=RenderSettings(samples=samples))
    return Job(job_id, "rendering.iso3do:render_job", {"scene": scene.to_dict(), "out_dir": str(out / job_id)})


def test_pool_renders_quarantines_failures_and_survives_a_dead_worker(tmp_path):
    mesh = tmp_path / "m.npz"
    mesh.write_bytes(clean(trimesh.creation.icosphere()).to_npz())
    with RenderPool(2, str(tmp_path / "logs"), timeout_s=120) as pool:
        jobs = [_job(f"ok{i}", str(mesh), tmp_path) for i in range(4)] + [_job("bad", str(tmp_path / "nope.npz"), tmp_path)]
        results = {r.id: r for r in pool.run(jobs)}
        assert set(results) == {"ok0", "ok1", "ok2", "ok3", "bad"}
        assert all(results[f"ok{i}"].ok for i in range(4))
        assert not results["bad"].ok and "nope.npz" in results["bad"].reason
        assert len({r.worker for r in results.values()}) == 2  # both actors did work

        pids = [p for p in pool.worker_pids() if p]
        threading.Timer(2.0, lambda: [os.kill(p, signal.SIGKILL) for p in pids]).start()
        slow = [_job(f"slow{i}", str(mesh), tmp_path, res=256, samples=256, views=12) for i in range(2)]
        crashed = pool.run(slow)
        assert all(not r.ok and "died" in r.reason for r in crashed)
        after = pool.run([_job("after", str(mesh), tmp_path)])  # workers restart by themselves
        assert after[0].ok
