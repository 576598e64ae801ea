"""prefect.yaml for real: a Prefect server process, `prefect deploy --all`, a deployment
run picked up by a process worker, the round's datasets committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flywheel.core.datasets import list_versions
from flywheel.core.store import LocalStore
from flywheel.ops.servers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_deploy_all_then_run_one_through_a_worker(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "COLUMNS": "250",  # untruncated tables
        "FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state"),
        "FLYWHEEL__STORE__ROOT": str(tmp_path / "store"),
    }
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[
                    -2000:
                ]
                time.sleep(0.5)

        def prefect(*args, timeout=300):
            out = subprocess.run(
                [BIN / "prefect", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
            )
            assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
            return out.stdout

        prefect("work-pool", "create", "flywheel-process", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        listed = prefect("deployment", "ls")
        for name in ("flywheel-round/round", "flywheel-round/close-round", "round-propose/propose-round"):
            assert name in listed
        assert "synth-all/synth-refresh" in prefect("deployment", "ls")
        prefect("deployment", "run", "synth-meshes/synth-meshes")
        prefect("worker", "start", "--pool", "flywheel-process", "--run-once")
        assert "COMPLETED" in prefect("flow-run", "ls")
        versions = list_versions(LocalStore(tmp_path / "store"), "meshes")
        assert [v["num_rows"] for v in versions] == [5]  # configs/test.yaml: 5 procedural meshes
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()
