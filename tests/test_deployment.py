"""prefect.yaml for real: a Prefect server process, `prefect deploy --all`, a deployment
run picked up by a process worker, the round's datasets committed; and what an ops engineer
sees of it through the API (the UI's data): run names, tags, the project's own log lines,
parameter descriptions."""

from __future__ import annotations

import json
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
        for name in ("flywheel-round/round", "round-close/close-round", "round-propose/propose-round"):
            assert name in listed
        assert "synth-all/synth-refresh" in prefect("deployment", "ls")
        prefect("deployment", "run", "synth-meshes/synth-meshes")
        prefect("worker", "start", "--pool", "flywheel-process", "--run-once")
        assert "COMPLETED" in prefect("flow-run", "ls")
        versions = list_versions(LocalStore(tmp_path / "store"), "meshes")
        assert [v["num_rows"] for v in versions] == [5]  # configs/test.yaml: 5 procedural meshes

        def api(path, body=None):
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/{path}", data, {"Content-Type": "application/json"}
            )
            return json.load(urllib.request.urlopen(request, timeout=30))

        [run] = api("flow_runs/filter", {})
        assert run["name"] == "synth-meshes" and run["state_type"] == "COMPLETED"
        assert "stage:synth" in run["tags"] and any(t.startswith("series:") for t in run["tags"]), run["tags"]
        tasks = api("task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        names = sorted(t["name"] for t in tasks)
        assert "mesh-library-seed-0" in names and f"validate-meshes@{versions[0]['version'][:4]}" in names, names
        assert all("stage:synth" in t["tags"] for t in tasks), [t["tags"] for t in tasks]
        # The project's own progress lines reach the run's logs under the worker, not only Prefect's.
        logs = api("logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
        project = [entry for entry in logs if not entry["name"].startswith("prefect")]
        assert any("committed meshes@" in entry["message"] for entry in project), [e["name"] for e in logs]
        assert any("PASSED" in entry["message"] for entry in project), [e["message"] for e in project]
        # The Custom Run form shows what each parameter means.
        close = api("deployments/name/round-close/close-round")
        properties = close["parameter_openapi_schema"]["properties"]
        assert set(close["parameter_openapi_schema"]["required"]) == {"round_index", "files"}
        for name in ("round_index", "files", "config"):
            assert len(properties[name].get("description", "")) > 20, (name, properties[name])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()
