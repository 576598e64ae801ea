"""The validation gate: every dataset a stage commits passes its suite before anything
consumes it. A failure stops the flow (downstream tasks never run) with the failing
expectations and example rows in the error, unless ops recorded an override reason
(config ``validation.overrides``), which is logged to MLflow with the report."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow

from flywheel.core.config import FlywheelConfig
from flywheel.core.datasets import Dataset
from flywheel.core.records import DatasetRef
from flywheel.validation.suites import validate, write_json
from tasks.conventions import flywheel_task, log_datasets, short, stage, store_for

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    pass


@flywheel_task(
    name="validate", version="2", retries=0, run_name=lambda p: f"validate-{short(p['dataset'])}"
)  # a failed suite is not transient
def gate(
    cfg: FlywheelConfig, dataset: DatasetRef, thresholds: dict, overrides: dict, parent_run_id: str | None = None
) -> dict:
    """Validate ``dataset``; raise :class:`ValidationFailed` unless it passes or is overridden.

    ``thresholds`` and ``overrides`` (config ``validation``) are parameters so that they are
    part of the cache key: a changed threshold re-validates, a failed gate is never cached."""
    reason = overrides.get(str(dataset)) or overrides.get(dataset.name)
    with stage(cfg, parent_run_id, f"validate-{dataset.name}") as run_id:
        log_datasets(run_id, inputs=[dataset])
        with tempfile.TemporaryDirectory(prefix="flywheel-validate-") as tmp:
            report = validate(Dataset(store_for(cfg), dataset.name, dataset.version), cfg.validation, docs_dir=tmp)
            mlflow.log_artifact(str(write_json(report, Path(tmp) / "validation.json")))
            if report.docs is not None:
                mlflow.log_artifacts(str(report.docs.parent), "data_docs")
        mlflow.log_metrics({"expectations": report.evaluated, "failed_expectations": len(report.failures)})
        mlflow.set_tags({"validation.success": str(report.success).lower(), "validation.dataset": str(dataset)})
        if not report.success:
            if not reason:
                raise ValidationFailed(
                    f"validation gate failed; fix the data or record an override "
                    f"(validation.overrides):\n{report.summary()}"
                )
            mlflow.set_tags({"validation.override": "true", "validation.override_reason": reason})
            log.warning("validation of %s FAILED but was overridden (%s):\n%s", dataset, reason, report.summary())
    return {
        "dataset": str(dataset),
        "success": report.success,
        "evaluated": report.evaluated,
        "failed": len(report.failures),
        "overridden": bool(reason) and not report.success,
    }


def gate_for(cfg: FlywheelConfig, dataset: DatasetRef, parent_run_id: str | None) -> dict:
    """Call the gate with the config's thresholds and overrides."""
    v = cfg.validation
    return gate(cfg, dataset, v.model_dump(exclude={"overrides"}), dict(v.overrides), parent_run_id=parent_run_id)
