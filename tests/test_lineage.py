"""Lineage on a real MLflow store (SQLite): rounds, nested stages, dataset inputs/outputs."""

from __future__ import annotations

import json

import mlflow
import pytest

from flywheel.core.config import load_config
from flywheel.core.contracts import SHAPES
from flywheel.core.records import DatasetRef
from flywheel.tracking import lineage


@pytest.fixture
def cfg(tmp_path):
    return load_config(
        environ={
            "FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state"),
            "FLYWHEEL__MLFLOW__EXPERIMENT": "lineage-test",
        }
    )


def ref(name, version, rows=3):
    return DatasetRef(name, version, f"/data/datasets/{name}/{version}", "d" * 64, rows)


def test_round_with_stages_and_datasets(cfg, tmp_path):
    parent = lineage.start_round(cfg, "round-1", params={"k": 1}, flow_run_id="flow-abc")
    shapes, stats = ref("shapes", "v1111", 9), ref("shape-stats", "v2222", 3)
    with lineage.stage_run(cfg, parent, "make", flow_run_id="flow-abc", task_run_id="task-1") as make:
        lineage.log_dataset(make, shapes, "output", "flow-abc")
        mlflow.log_metric("objects", 9)  # fluent calls go to the stage run
    with lineage.stage_run(cfg, parent, "summarise", flow_run_id="flow-abc") as summ:
        lineage.log_dataset(summ, shapes, "input", "flow-abc")
        lineage.log_dataset(summ, stats, "output", "flow-abc")
    lineage.end_round(parent)

    client = mlflow.MlflowClient()
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.params == {"k": "1"}
    assert client.get_run(parent).info.artifact_uri.startswith((tmp_path / "state").as_uri())
    stages = lineage.stage_runs(parent)
    assert [r.data.tags[lineage.STAGE_TAG] for r in stages] == ["make", "summarise"]
    assert all(r.data.tags[lineage.ROUND_TAG] == "round-1" for r in stages)
    assert stages[0].data.tags[lineage.FLOW_RUN_TAG] == "flow-abc"
    assert stages[0].data.tags[lineage.TASK_RUN_TAG] == "task-1"
    assert stages[0].data.metrics == {"objects": 9.0}
    assert lineage.run_datasets(make) == [
        {
            "name": "shapes",
            "version": "v1111",
            "context": "output",
            "num_rows": 9,
            "uri": shapes.uri,
            "flow_run_id": "flow-abc",
        }
    ]
    got = {(d["name"], d["context"]) for d in lineage.run_datasets(summ)}
    assert got == {("shapes", "input"), ("shape-stats", "output")}
    assert client.get_run(summ).data.tags["dataset.input.shapes"] == "v1111"
    # the dataset carries its kind's schema (defined once, in flywheel.core.contracts) and a profile
    logged = {d.dataset.name: d.dataset for d in client.get_run(summ).inputs.dataset_inputs}
    columns = {c["name"]: c["type"] for c in json.loads(logged["shapes"].schema)["mlflow_colspec"]}
    assert set(SHAPES.schema.names) <= set(columns) and columns["object_id"] == "string"
    assert json.loads(logged["shapes"].profile)["num_rows"] == 9
    assert logged["shape-stats"].schema in (None, "")  # a kind nobody registered: no schema made up


def test_unfinished_round_is_resumed_finished_round_is_not(cfg):
    first = lineage.start_round(cfg, "round-2")
    with pytest.raises(RuntimeError):
        with lineage.stage_run(cfg, first, "boom"):
            raise RuntimeError("stage failed")
    lineage.end_round(first, failed=True)
    assert lineage.stage_runs(first)[0].info.status == "FAILED"
    resumed = lineage.start_round(cfg, "round-2")
    assert resumed == first
    assert mlflow.MlflowClient().get_run(first).data.tags["flywheel.resumed"] == "true"
    lineage.end_round(resumed)
    assert lineage.start_round(cfg, "round-2") != first  # a finished round starts afresh


def test_context_must_be_input_or_output(cfg):
    parent = lineage.start_round(cfg, "round-3")
    with pytest.raises(ValueError, match="context"):
        lineage.log_dataset(parent, ref("x", "v"), "consumed")
