"""The task conventions on real Prefect flow runs: retries, cache keys, persisted results,
re-runs after a failure."""

from __future__ import annotations

import pytest
from prefect import flow

from flywheel.core.config import load_config
from tasks.conventions import cache_key_for, ensure_result_storage, flywheel_task

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


# What the tasks below did: they run in this process, in Prefect's worker threads. Cleared
# before every test, so each test sees only its own runs, in any order.
ATTEMPTS: dict[str, int] = {}
FAIL_ONCE: set[str] = set()


@pytest.fixture(autouse=True)
def _fresh_attempts():
    ATTEMPTS.clear()
    FAIL_ONCE.clear()


@flywheel_task(name="test-double", version="1")
def double(x: int, parent_run_id: str | None = None) -> int:
    ATTEMPTS[f"double-{x}"] = ATTEMPTS.get(f"double-{x}", 0) + 1
    return 2 * x


@flywheel_task(name="test-add", version="1", retries=0)
def add(a: int, b: int) -> int:
    ATTEMPTS[f"add-{a}-{b}"] = ATTEMPTS.get(f"add-{a}-{b}", 0) + 1
    if f"add-{a}-{b}" in FAIL_ONCE:
        FAIL_ONCE.discard(f"add-{a}-{b}")
        raise RuntimeError("injected failure")
    return a + b


@flywheel_task(name="test-flaky", version="1")
def flaky(x: int) -> int:
    ATTEMPTS[f"flaky-{x}"] = ATTEMPTS.get(f"flaky-{x}", 0) + 1
    if ATTEMPTS[f"flaky-{x}"] == 1:
        raise ConnectionError("transient")
    return x


@flow
def pipeline(x: int, parent_run_id: str | None = None) -> int:
    ensure_result_storage(load_config())
    return add(double(x, parent_run_id=parent_run_id), 1)


def test_failed_flow_rerun_reuses_finished_tasks():
    FAIL_ONCE.add("add-20-1")
    failed = pipeline(10, return_state=True)
    assert failed.is_failed()
    assert ATTEMPTS == {"double-10": 1, "add-20-1": 1}
    assert pipeline(10, parent_run_id="another-mlflow-run") == 21  # parent run not in the key
    assert ATTEMPTS == {"double-10": 1, "add-20-1": 2}  # double was not recomputed
    assert pipeline(11) == 23 and ATTEMPTS["double-11"] == 1  # new input, new key


def test_transient_failure_is_retried():
    @flow
    def f():
        ensure_result_storage(load_config())
        return flaky(5, return_state=True)

    state = f()
    assert state.is_completed() and state.result() == 5
    assert ATTEMPTS["flaky-5"] == 2  # configs/test.yaml: 1 retry


def test_cache_key_has_version_and_ignores_bookkeeping():
    cfg = load_config()
    key = cache_key_for("t", "1")
    base = key(None, {"cfg": cfg, "x": 1, "parent_run_id": "a"})
    assert base == key(None, {"cfg": cfg, "x": 1, "parent_run_id": "b"})
    assert base != key(None, {"cfg": cfg, "x": 2})
    assert base != cache_key_for("t", "2")(None, {"cfg": cfg, "x": 1})
    other_store = load_config(environ={"FLYWHEEL__STORE__ROOT": "/elsewhere"})
    assert base != key(None, {"cfg": other_store, "x": 1})


def test_training_elsewhere_moves_its_progress_from_the_mlflow_run(tmp_path):
    """A stage on Ray Train logs its steps to MLflow from rank 0; the task's progress artifact
    follows the run's latest step while it trains, and shows the whole when it ends."""
    import time

    import mlflow
    from prefect.client.orchestration import get_client

    from tasks.conventions import FollowedTraining

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def shown(artifact_id) -> str:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

        with get_client(sync_client=True) as client:
            [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
        return artifact.description

    @flow
    def train_elsewhere() -> list[str]:
        seen = []
        # its own experiment: the session's active one lives in another store
        experiment = mlflow.tracking.MlflowClient().create_experiment("followed-training")
        with mlflow.start_run(experiment_id=experiment) as run:
            with FollowedTraining(run.info.run_id, "pretrain", 40, every_s=0.2) as followed:
                for step in (10, 20):  # what rank 0 logs, from another process in real use
                    mlflow.log_metric("loss", 1.0 / step, step=step)
                deadline = time.monotonic() + 30
                while shown(followed.progress.id) != "training pretrain, steps: 20/40":
                    assert time.monotonic() < deadline, shown(followed.progress.id)
                    time.sleep(0.2)
                seen.append(shown(followed.progress.id))
            seen.append(shown(followed.progress.id))
        return seen

    try:
        assert train_elsewhere() == ["training pretrain, steps: 20/40", "training pretrain, steps: 40/40"]
    finally:
        mlflow.set_tracking_uri(previous)  # other tests' MLflow store
