"""Test fixtures: real S3-compatible servers on loopback, isolated state, stores.

The environment is set at import, before any test module imports Prefect (which reads
its settings when imported) or builds a config.
"""

from __future__ import annotations

import os
import tempfile
import uuid
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

from flywheel.core.config import StoreConfig  # noqa: E402
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
    root = f"s3://{BUCKET}/{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"
    return S3Store(root, s3_store_config(server, root))


@pytest.fixture(params=["local", "seaweedfs", "moto"])
def any_store(request, tmp_path) -> Store:
    """A fresh, empty store on local disk and on each S3 server (same test cases)."""
    return make_store(request.param, request, tmp_path)


@pytest.fixture(params=["local", "seaweedfs"])
def store(request, tmp_path) -> Store:
    """A fresh store on local disk and on the credential-checking S3 server."""
    return make_store(request.param, request, tmp_path)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (it takes ~25 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """pytest-randomly shuffles the test order; -q hides its header, so say the seed here."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"test order: pytest-randomly seed {seed} (replay it: --randomly-seed={seed})")
