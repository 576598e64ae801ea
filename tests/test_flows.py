"""Real Prefect flow runs (one test server for the session): the demo round, the task
conventions (retries, cache keys, persisted results) and re-runs after a failure."""

from __future__ import annotations

import mlflow
import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from conftest import BUCKET
from flywheel import lineage
from flywheel.config import load_config
from flywheel.datasets import Dataset
from flywheel.store import open_store
from tasks.conventions import cache_key_for, ensure_result_storage, flywheel_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _stage_names(parent_run_id):
    return [r.data.tags[lineage.STAGE_TAG] for r in lineage.stage_runs(parent_run_id)]


def test_demo_round_commits_datasets_and_lineage_then_reruns_from_cache(monkeypatch, tmp_path):
    from flows.demo import demo_round

    monkeypatch.setenv("FLYWHEEL__STORE__ROOT", str(tmp_path / "store"))
    state = demo_round(return_state=True)
    assert state.is_completed()
    result = state.result()
    shapes, stats = result["datasets"]
    assert shapes["num_rows"] == 9 and stats["num_rows"] == 3  # configs/test.yaml: 9 objects
    store = open_store(str(tmp_path / "store"))
    ds = Dataset(store, "shapes", shapes["version"])
    assert ds.verify() == [] and ds.marker["inputs"] == {"num_objects": 9, "resolution": 16, "seed": 0}
    stat_rows = Dataset(store, "shape-stats", stats["version"]).manifest().to_pylist()
    assert sorted(r["family"] for r in stat_rows) == ["compound", "superquadric", "torus"]
    assert sum(r["count"] for r in stat_rows) == 9

    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[lineage.FLOW_RUN_TAG] == str(state.state_details.flow_run_id)
    assert _stage_names(parent.info.run_id) == ["make-shapes", "summarise-shapes"]
    make, summarise = lineage.stage_runs(parent.info.run_id)
    assert [(d["name"], d["version"], d["context"]) for d in lineage.run_datasets(make.info.run_id)] == [
        ("shapes", shapes["version"], "output")]
    assert {(d["name"], d["context"]) for d in lineage.run_datasets(summarise.info.run_id)} == {
        ("shapes", "input"), ("shape-stats", "output")}
    assert all(d["flow_run_id"] == str(state.state_details.flow_run_id)
               for d in lineage.run_datasets(summarise.info.run_id))
    assert [a.path for a in client.list_artifacts(make.info.run_id)] == ["shapes_sheet.png"]
    assert summarise.data.metrics["num_objects"] == 9

    again = demo_round(return_state=True)  # finished work is reused, nothing recomputed
    assert again.result()["datasets"] == result["datasets"]
    assert again.result()["mlflow_run_id"] != result["mlflow_run_id"]
    assert _stage_names(again.result()["mlflow_run_id"]) == []  # both tasks were cache hits


def test_demo_round_on_s3(monkeypatch, seaweedfs):
    from flows.demo import demo_round

    root = f"s3://{BUCKET}/demo-flow"
    monkeypatch.setenv("FLYWHEEL__STORE__ROOT", root)
    monkeypatch.setenv("FLYWHEEL__STORE__ENDPOINT_URL", seaweedfs.endpoint_url)
    result = demo_round(num_objects=4)
    shapes = result["datasets"][0]
    assert shapes["uri"] == f"{root}/datasets/shapes/{shapes['version']}"
    store = open_store(config=load_config().store)
    assert Dataset(store, "shapes", shapes["version"]).verify() == []
    make = lineage.stage_runs(result["mlflow_run_id"])[0]
    assert lineage.run_datasets(make.info.run_id)[0]["uri"].startswith("s3://")


ATTEMPTS: dict[str, int] = {}
FAIL_ONCE: set[str] = set()


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
