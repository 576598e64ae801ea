"""Test fixtures: real S3-compatible servers on loopback, isolated state, stores.

The environment is set at import, before any test module imports Prefect (which reads
its settings when imported) or builds a config.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.mkdtemp(prefix="flywheel-tests-"))
S3_KEY, S3_SECRET = "flywheel-test-key", "flywheel-test-secret"
BUCKET = "flywheel-test"

for var in list(os.environ):
    if var.startswith(("FLYWHEEL", "PREFECT_", "MLFLOW_", "AWS_")):
        del os.environ[var]
os.environ.update(
    {
        "FLYWHEEL_CONFIG": str(REPO / "configs" / "test.yaml"),
        "FLYWHEEL__PROJECT__STATE_DIR": str(SESSION_DIR / "state"),
        "FLYWHEEL__STORE__ROOT": str(SESSION_DIR / "store"),
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(SESSION_DIR / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(SESSION_DIR / "no-aws-credentials"),
    }
)

from flywheel.core.config import FlywheelConfig, StoreConfig, load_config  # noqa: E402
from flywheel.core.datasets import Dataset  # noqa: E402
from flywheel.core.records import RunSummary  # noqa: E402
from flywheel.core.store import LocalStore, S3Store, Store  # noqa: E402
from flywheel.ops.servers import S3Server, start_moto, start_seaweedfs  # noqa: E402


@pytest.fixture(scope="session")
def seaweedfs() -> S3Server:
    server = start_seaweedfs(SESSION_DIR / "seaweedfs", S3_KEY, S3_SECRET)
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto() -> S3Server:
    server = start_moto(SESSION_DIR / "moto")
    server.create_bucket(BUCKET)
    yield server
    server.stop()


def s3_store_config(server: S3Server, root: str, **overrides) -> StoreConfig:
    return StoreConfig(
        root=root,
        endpoint_url=server.endpoint_url,
        region="us-east-1",
        **{"max_attempts": 3, "connect_timeout_s": 2, "read_timeout_s": 10, **overrides},
    )


def make_store(kind: str, request, tmp_path: Path) -> Store:
    if kind == "local":
        return LocalStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue(kind)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name[:40])  # a test id may hold '/' or '..'
    root = f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"
    return S3Store(root, s3_store_config(server, root))


@pytest.fixture(params=["local", "seaweedfs", "moto"])
def any_store(request, tmp_path) -> Store:
    """A fresh, empty store on local disk and on each S3 server (same test cases)."""
    return make_store(request.param, request, tmp_path)


@pytest.fixture(params=["local", "seaweedfs"])
def store(request, tmp_path) -> Store:
    """A fresh store on local disk and on the credential-checking S3 server."""
    return make_store(request.param, request, tmp_path)


def stop_process_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM a server's or worker's process group, give it ``grace`` seconds, then SIGKILL
    what is left of the group: the leader when it hangs in its own shutdown (Prefect's process
    worker did in CI), children that outlive it (Ray's GCS, raylet and workers)."""
    os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def cli_env(store_root: Path, **extra: str) -> dict[str, str]:
    """The environment of the CLI run in another process, on ``store_root`` and on this
    session's Prefect server (needs the ``prefect_server`` fixture): a flow run there would
    otherwise start its own ephemeral server on a new database, ~25 s each."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "FLYWHEEL__STORE__ROOT": str(store_root), "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (it takes ~25 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_small_round(
    store: Store, objects, candidate_id=lambda o, k: f"{o}-c{k}", version: str = "candidates-v1", resolution: int = 4
):
    """An image pool of ``objects`` (16x16 photos) and three candidates for each (real
    datasets, small; occupancy grids of side ``resolution``): -> (pool ref, candidates ref)."""
    import numpy as np

    from flywheel.core.codecs import encode_npy, encode_png
    from flywheel.core.contracts import CANDIDATES, IMAGE_POOL
    from flywheel.core.datasets import write_dataset

    rgb = np.full((16, 16, 3), 120, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    pool = write_dataset(
        store,
        IMAGE_POOL,
        "pool-v1",
        [
            (
                o,
                {"object_id": o, "source": f"test/{o}", "width": 16, "height": 16, "mask_pixels": 64},
                {"rgb.png": encode_png(rgb), "mask.png": encode_png(mask)},
            )
            for o in objects
        ],
    )
    rows = []
    for o in objects:
        for k in range(3):
            occ = np.zeros((resolution,) * 3, bool)
            occ[: k + 1] = True
            row = {
                "candidate_id": candidate_id(o, k),
                "object_id": o,
                "member": "champion",
                "kind": "model",
                "model_version": "sam3d/1",
                "seed": k,
                "guidance": 0.0,
                "steps": 25,
                "retrieved_mesh_id": "",
                "R": np.eye(3).ravel().tolist(),
                "t": [0.0, 0.0, 2.5],
                "s": 1.0,
                "occupied_fraction": float(occ.mean()),
            }
            rows.append((row["candidate_id"], row, {"occ.npy": encode_npy(occ)}))
    return pool, write_dataset(store, CANDIDATES, version, rows, parents=[pool])


# -- flow runs shared by several test modules (session: each runs once) ---------------------

MICRO_CANDIDATES = {
    "FLYWHEEL__CANDIDATES__NUM_CANDIDATES": "4",
    "FLYWHEEL__CANDIDATES__OBJECTS_PER_PART": "2",
    "FLYWHEEL__CANDIDATES__PREVIEW_RESOLUTION": "48",
    "FLYWHEEL__CANDIDATES__MEMBERS": json.dumps(
        [{"name": "champion", "seeds": [0, 1]}, {"name": "retrieval", "kind": "retrieval", "top_k": 2}]
    ),
}


def _config(root: Path, **env: str) -> FlywheelConfig:
    """The test config on the store at ``root``, with ``env`` overrides (FLYWHEEL__...)."""
    return load_config(environ={**os.environ, "FLYWHEEL__STORE__ROOT": str(root), **env})


@dataclass
class Made:
    """What a session fixture's flow run made: its config, store and result."""

    cfg: FlywheelConfig
    store: LocalStore
    result: RunSummary

    def dataset(self, name: str) -> Dataset:
        ref = next(d for d in self.result.datasets if d.name == name)
        return Dataset(self.store, ref.name, ref.version)


@pytest.fixture(scope="session")
def synthetic(prefect_server, tmp_path_factory) -> Made:
    """The synthetic-data demo flow, run once for the tests that read its datasets."""
    from flows.synth import synth_all

    root = tmp_path_factory.mktemp("synthetic") / "store"
    cfg = _config(root)
    return Made(cfg, LocalStore(root), synth_all(config=cfg))


def _micro_checkpoint(folder: Path) -> Path:
    import torch

    from flywheel.learning.toy import toy_examples
    from sam3d_model import train as T
    from sam3d_model.checkpoint import save_checkpoint
    from sam3d_model.config import preset
    from sam3d_model.data import batch_stream
    from sam3d_model.model import SmallSam3D

    torch.manual_seed(0)
    model = SmallSam3D(preset("micro"))
    T.train_vae(
        model, batch_stream(lambda: toy_examples(model.cfg, 4), 4), T.TrainSettings(steps=3), calibration_batches=1
    )
    return save_checkpoint(folder / "champion.pt", model)


@pytest.fixture(scope="session")
def proposed(synthetic: Made, tmp_path_factory) -> Made:
    """propose on the synthetic run's composites with a micro checkpoint (2 seeds + 2
    retrieved meshes), run once for the tests that read its candidates."""
    from flows.propose import propose

    checkpoint = _micro_checkpoint(tmp_path_factory.mktemp("champion"))
    cfg = _config(
        Path(synthetic.store.root),
        FLYWHEEL__CANDIDATES__MODELS=json.dumps({"champion": str(checkpoint)}),
        **MICRO_CANDIDATES,
    )
    return Made(cfg, synthetic.store, propose(config=cfg))


@dataclass
class LabelStudioServer:
    """A real Label Studio on loopback: its URL, the admin's login and API token, and the
    folder it serves local files from (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)."""

    url: str
    email: str
    password: str
    token: str
    document_root: Path


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """Label Studio 1.23 from its own venv (scripts/setup.sh --test); serves local files from
    pytest's temporary folder, so the stores of the flow fixtures can be shown."""
    import socket
    import subprocess
    import time

    import requests

    exe = REPO / os.environ.get("LABEL_STUDIO_VENV", ".venv-labelstudio") / "bin" / "label-studio"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: run `bash scripts/setup.sh --test` (the README's test command does)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path_factory.getbasetemp()
    data = tmp_path_factory.mktemp("label-studio")
    server = LabelStudioServer(f"http://127.0.0.1:{port}", "admin@example.com", "flywheel-pw-1", uuid.uuid4().hex, root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL", "PREFECT_", "MLFLOW_", "AWS_"))} | {
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
    }
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
        + ["--data-dir", str(data / "data"), "--username", server.email, "--password", server.password]
        + ["--user-token", server.token, "--enable-legacy-api-token"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            if requests.get(f"{server.url}/api/projects", headers={"Authorization": f"Token {server.token}"}).ok:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("Label Studio did not start:\n" + (data / "server.log").read_text()[-3000:])
        time.sleep(1)
    yield server
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """pytest-randomly shuffles the test order; -q hides its header, so say the seed here."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"test order: pytest-randomly seed {seed} (replay it: --randomly-seed={seed})")


def pytest_unconfigure(config):
    """The session's stores, servers' data and state: half a gigabyte per run, not kept."""
    shutil.rmtree(SESSION_DIR, ignore_errors=True)
