"""prefect.yaml for real: a Prefect server process, `prefect deploy --all`, a deployment
run picked up by a process worker, the round's datasets committed; and what an ops engineer
sees of it through the API (the UI's data): run names, tags, the project's own log lines,
parameter descriptions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import stop_process_group

from flywheel.core.datasets import list_versions
from flywheel.core.store import LocalStore
from flywheel.ops.servers import free_port
from flywheel.rounds import ledger

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class PrefectServer:
    port: int
    env: dict

    def prefect(self, *args, timeout=300) -> str:
        out = subprocess.run(
            [BIN / "prefect", *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def api(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/{path}", data, {"Content-Type": "application/json"}
        )
        return json.load(urllib.request.urlopen(request, timeout=30))


@pytest.fixture
def server(tmp_path):
    """A Prefect server process on loopback, with the flywheel-process pool and every deployment."""
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
    process = subprocess.Popen(
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
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[
                    -2000:
                ]
                time.sleep(0.5)
        running = PrefectServer(port, env)
        running.prefect("work-pool", "create", "flywheel-process", "--type", "process")
        running.prefect("--no-prompt", "deploy", "--all")
        yield running
    finally:
        stop_process_group(process, 30)
        log.close()


def test_deploy_all_then_run_one_through_a_worker(server: PrefectServer, tmp_path):
    prefect, api = server.prefect, server.api
    listed = prefect("deployment", "ls")
    for name in ("flywheel-round/round", "round-close/close-round", "round-propose/propose-round"):
        assert name in listed
    assert "synth-all/synth-refresh" in prefect("deployment", "ls")
    prefect("deployment", "run", "synth-meshes/synth-meshes")
    prefect("worker", "start", "--pool", "flywheel-process", "--run-once")
    assert "COMPLETED" in prefect("flow-run", "ls")
    versions = list_versions(LocalStore(tmp_path / "store"), "meshes")
    # configs/test.yaml: the held-out sets' libraries (rounds.eval_meshes, synthetic_eval_objects),
    # then the library to train on (5 procedural meshes, none of them held out)
    assert [v["num_rows"] for v in versions] == [4, 2, 5]

    [run] = api("flow_runs/filter", {})
    assert run["name"] == "synth-meshes" and run["state_type"] == "COMPLETED"
    assert "stage:synth" in run["tags"] and any(t.startswith("series:") for t in run["tags"]), run["tags"]
    tasks = api("task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    names = sorted(t["name"] for t in tasks)
    assert "mesh-library-seed-0" in names and f"validate-meshes@{versions[-1]['version'][:4]}" in names, names
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


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


def test_alerts_reach_a_webhook_for_a_failed_round_a_failed_gate_and_a_late_round(server: PrefectServer, tmp_path):
    """`flywheel stack alerts` on a real server, real flow runs through a process worker, and a
    local HTTP receiver that must get each message: a round that fails (close-round with no
    exports), a gate that fails (a mesh library from an empty folder) and a round that runs past
    its expected time (a real round waiting for the round lock this test holds; cancelled after)."""
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    def flywheel(*args):
        return subprocess.run(
            [BIN / "flywheel", *args], env=server.env, cwd=REPO, capture_output=True, text=True, timeout=120
        )

    declared = flywheel("stack", "alerts", "--webhook", hook, "--round-minutes", "0.25")
    assert declared.returncode == 0, declared.stderr
    assert declared.stdout.count("automation: flywheel:") == 3
    again = flywheel("stack", "alerts", "--webhook", hook, "--round-minutes", "0.25")
    assert again.returncode == 0 and len(server.api("automations/filter", {})) == 3  # replaced, not added

    def messages() -> str:
        return "\n".join(f"{m.get('subject')} | {m.get('text')}" for m in _Receiver.received)

    def wait_for(*subjects: str) -> None:
        deadline = time.monotonic() + 240
        while not all(any(m.get("subject", "").startswith(s) for m in _Receiver.received) for s in subjects):
            assert time.monotonic() < deadline, (
                f"messages so far:\n{messages()}\nworker:\n"
                + (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
            )
            time.sleep(1)

    empty = tmp_path / "no-meshes"
    empty.mkdir()
    (tmp_path / "empty.yaml").write_text(f"meshes: {{source: {empty}}}\n")
    worker = subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", "flywheel-process", "--limit", "3"],
        env=server.env,
        cwd=REPO,
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    store = LocalStore(tmp_path / "store")
    try:
        server.prefect("deployment", "run", "round-close/close-round", "-p", "round_index=0", "-p", "files=[]")
        server.prefect("deployment", "run", "synth-meshes/synth-meshes", "-p", f"config={tmp_path / 'empty.yaml'}")
        wait_for("flywheel: round ", "flywheel: validate-meshes@")
        with ledger.round_lock(tmp_path / "state" / "rounds.lock", 0, store):  # the next round waits on it
            started = server.prefect("deployment", "run", "flywheel-round/round")
            run_id = re.search(r"UUID: ([0-9a-f-]{36})", started)[1]
            wait_for("flywheel: a round is late")
            server.prefect("flow-run", "cancel", run_id)
            # Hold the lock until the worker has stopped the run: released earlier, the round
            # would go on to run whole, and the worker's shutdown would wait for it.
            deadline = time.monotonic() + 120
            while server.api(f"flow_runs/{run_id}")["state_type"] != "CANCELLED":
                assert time.monotonic() < deadline, server.api(f"flow_runs/{run_id}")["state"]
                time.sleep(1)
    finally:
        stop_process_group(worker, 60)
        receiver.shutdown()
    failed = next(m for m in _Receiver.received if m["subject"].startswith("flywheel: round "))
    assert "Failed" in failed["subject"] and "needs at least one annotation export" in failed["text"], failed
    gate = next(m for m in _Receiver.received if m["subject"].startswith("flywheel: validate-meshes@"))
    assert "synth-meshes" in gate["text"], gate
    late = next(m for m in _Receiver.received if m["subject"] == "flywheel: a round is late")
    assert run_id in late["text"], late
