"""Training stages on Ray Train against a real local Ray cluster (`ray start --head` on
loopback) with checkpoints in an S3 server on loopback: a 2-worker stage killed mid-way
resumes to the weights of an uninterrupted 2-worker run; one worker trains exactly what one
process does. Each run is a driver process (tests/ray_train_driver.py) given RAY_ADDRESS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import BUCKET, Made, s3_store_config, stop_process_group

from flywheel.core.store import S3Store

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "ray_train_driver.py"
#: A micro pre-training stage: checkpoints every 10 of 40 steps, 4 rows a global batch.
STAGE = {
    "FLYWHEEL__MODEL__PRESET": "micro",
    "FLYWHEEL__MODEL__PRETRAIN__STEPS": "40",
    "FLYWHEEL__MODEL__PRETRAIN__BATCH_SIZE": "4",
    "FLYWHEEL__MODEL__DEVICE": "cpu",
}


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    from flywheel.ops.servers import free_port

    logs = tmp_path_factory.mktemp("ray")
    port = free_port()
    # Short: Ray's Unix sockets live under RAY_TMPDIR and pytest's paths exceed the 107-byte limit.
    tmpdir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # TMPDIR too: a killed run's workers cannot remove their work folders; they go with this one
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tmpdir, "TMPDIR": tmpdir}
    head = subprocess.Popen(
        [Path(sys.executable).parent / "ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=3"]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        env=env,
        start_new_session=True,
        stdout=open(logs / "head.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert head.poll() is None and time.monotonic() < deadline, (logs / "head.log").read_text()[-2000:]
        time.sleep(0.2)
    yield {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tmpdir}
    stop_process_group(head, 3)  # a graceful Ray stop would wait ~30 s on its workers
    shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_iso3do(synthetic: Made, seaweedfs):
    """The synthetic run's Iso-3DO renders, copied to an S3 store: (store, its env, refs JSON)."""
    ref = next(d for d in synthetic.result.datasets if d.name == "iso3do")
    root = f"s3://{BUCKET}/ray-train-{uuid.uuid4().hex[:8]}"
    store = S3Store(root, s3_store_config(seaweedfs, root))
    prefix = f"datasets/iso3do/{ref.version}/"
    for item in synthetic.store.list(prefix):
        store.put_bytes(item.key, synthetic.store.get_bytes(item.key))
    env = {"FLYWHEEL__STORE__ROOT": root, "FLYWHEEL__STORE__ENDPOINT_URL": seaweedfs.endpoint_url}
    return store, env, json.dumps({"iso3do": [{**ref.to_dict(), "uri": store.uri(prefix.rstrip("/"))}]})


def _train(s3_iso3do, ray_address, run: str, out: Path, workers: int, kill_at: int | None = None, **extra: str):
    _, store_env, refs = s3_iso3do
    env = {**os.environ, **ray_address, **store_env, **STAGE, "FLYWHEEL__MODEL__TRAIN_WORKERS": str(workers), **extra}
    args = [sys.executable, str(DRIVER), "pretrain", refs, run, str(out)] + ([str(kill_at)] if kill_at else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_workers_killed_mid_stage_resume_from_s3_to_the_uninterrupted_weights(s3_iso3do, ray_address, tmp_path):
    store = s3_iso3do[0]
    killed = _train(s3_iso3do, ray_address, "killed", tmp_path / "killed.pt", 2, kill_at=20)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
    assert not (tmp_path / "killed.pt").exists()
    landed = [o.key for o in store.list("ray-train/killed/") if o.key.endswith("/last.pt")]
    assert landed, "no checkpoint reached the S3 store before the kill"

    resumed = _train(s3_iso3do, ray_address, "killed", tmp_path / "killed.pt", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    counts = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert counts["resumed_from_step"] in (10, 20), counts  # not from scratch, not past the kill

    straight = _train(s3_iso3do, ray_address, "straight", tmp_path / "straight.pt", 2)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert json.loads(straight.stdout.strip().splitlines()[-1])["resumed_from_step"] == 0
    _same(_weights(tmp_path / "killed.pt"), _weights(tmp_path / "straight.pt"))


def test_one_ray_train_worker_trains_what_one_process_trains(s3_iso3do, ray_address, tmp_path):
    on_ray = _train(s3_iso3do, ray_address, "one-worker", tmp_path / "ray.pt", 1)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    # Ray runs each worker with one intra-op thread; so does this process here, since another
    # thread count sums floats in another order (the same weights to ~1e-7, not bit for bit)
    here = _train(s3_iso3do, ray_address, "-", tmp_path / "here.pt", 0, OMP_NUM_THREADS="1")
    assert here.returncode == 0, here.stderr[-3000:]
    _same(_weights(tmp_path / "ray.pt"), _weights(tmp_path / "here.pt"))
