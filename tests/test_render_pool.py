"""The Ray actor pool of Blender workers: real Ray (local), real Blender."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import trimesh
from conftest import stop_process_group

from rendering.meshes import clean
from rendering.pool import Job, RenderPool
from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at

pytestmark = pytest.mark.slow


def _job(job_id, mesh, out, res=16, samples=1, views=1):
    cams = [Camera(intrinsics(40, res, res), look_at((0, -3, 0.5)), res, res)] * views
    scene = Scene(
        cams,
        [SceneObject("s", mesh, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0], 1.0, 1)],
        [],
        settings=RenderSettings(samples=samples),
    )
    return Job(job_id, "rendering.iso3do:render_job", {"scene": scene.to_dict(), "out_dir": str(out / job_id)})


def test_pool_renders_quarantines_failures_and_survives_a_dead_worker(tmp_path):
    mesh = tmp_path / "m.npz"
    mesh.write_bytes(clean(trimesh.creation.icosphere()).to_npz())
    with RenderPool(2, str(tmp_path / "logs"), timeout_s=120) as pool:
        jobs = [_job(f"ok{i}", str(mesh), tmp_path) for i in range(4)] + [
            _job("bad", str(tmp_path / "nope.npz"), tmp_path)
        ]
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


DRIVER = """
import sys, trimesh
from pathlib import Path
from rendering.meshes import clean
from rendering.pool import Job, RenderPool
from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at
import ray
d = Path(sys.argv[1])
(d / "m.npz").write_bytes(clean(trimesh.creation.icosphere()).to_npz())
scene = Scene([Camera(intrinsics(40, 16, 16), look_at((0, -3, 0)), 16, 16)],
              [SceneObject("s", str(d / "m.npz"), [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0], 1.0, 1)], [],
              settings=RenderSettings(samples=1))
with RenderPool(2, str(d / "logs")) as pool:
    results = pool.run([Job(f"j{i}", "rendering.iso3do:render_job",
                            {"scene": scene.to_dict(), "out_dir": str(d / f"o{i}")}) for i in range(3)])
print("OK" if all(r.ok for r in results) else [r.reason for r in results], ray.get_runtime_context().gcs_address)
"""


def test_the_same_pool_runs_against_a_ray_cluster_address(tmp_path):
    """`ray start --head` as a separate cluster; the driver only gets RAY_ADDRESS. Token
    authentication is disabled on both sides here (loopback, test only); sharing the token
    with clients is the local stack's job (infra/RUNBOOK.md)."""
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from flywheel.ops.servers import free_port

    port = free_port()
    # Short: Ray's Unix sockets live under RAY_TMPDIR and pytest's paths exceed the 107-byte limit.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=open(tmp_path / "head.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(0.2)
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=Path(__file__).resolve().parent.parent,
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert driver.stdout.split()[0] == "OK" and driver.stdout.split()[1].endswith(f":{port}")
    finally:
        stop_process_group(head, 60)
