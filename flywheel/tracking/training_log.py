"""A training stage's report in MLflow: params, per-step metrics, a learning-curve PNG."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from flywheel.tracking.plots import curves


class MlflowTrainLog:
    """Logs to one MLflow run by id (stages run in worker threads: no "active run");
    a :class:`sam3d_model.train.TrainLog`."""

    def __init__(self, run_id: str, tracking_uri: str | None = None):
        import mlflow

        self.run_id, self.tracking_uri = run_id, tracking_uri or mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(self.tracking_uri)

    def __reduce__(self):  # to a Ray Train worker: the run and where it is, not the open client
        return (MlflowTrainLog, (self.run_id, self.tracking_uri))

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])

    def metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def finished(self, stage: str, history: list[dict]) -> None:
        if not history:
            return
        keys = dict.fromkeys(k for h in history for k in h if k not in ("step", "steps_per_s"))
        series: dict[str, tuple[Any, ...] | dict[str, tuple[Any, ...]]] = {
            k: ([h["step"] for h in history if k in h], [h[k] for h in history if k in h]) for k in keys
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = curves(series, Path(tmp) / f"{stage}_curves.png", title=f"{stage}: learning curves")
            self.client.log_artifact(self.run_id, str(path), "curves")
