"""The MLflow tracking store and experiment a config names."""

from __future__ import annotations

from flywheel.core.config import FlywheelConfig

EXPERIMENT_KIND = "mlflow.experimentKind"  # the MLflow UI's choice of default view


def configure(cfg: FlywheelConfig) -> str:
    """Point MLflow at the configured tracking store and experiment; returns the experiment id."""
    import mlflow

    artifacts = cfg.mlflow.artifact_location
    if cfg.mlflow.tracking_uri is None:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        # Without this MLflow writes artifacts to ./mlruns of whatever folder the run is in.
        artifacts = artifacts or (cfg.state_dir / "mlflow-artifacts").as_uri()
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        from mlflow.exceptions import MlflowException

        try:
            # A model-training experiment: MLflow 3's UI opens it on its runs, not the GenAI dashboard.
            mlflow.create_experiment(
                cfg.mlflow.experiment, artifact_location=artifacts, tags={EXPERIMENT_KIND: "custom_model_development"}
            )
        except MlflowException:  # created meanwhile by a concurrent stage
            pass
    return mlflow.set_experiment(cfg.mlflow.experiment).experiment_id


def _ui(cfg: FlywheelConfig) -> str | None:
    uri = cfg.mlflow_tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def run_link(cfg: FlywheelConfig, experiment_id: str, run_id: str) -> str:
    """Where people open an MLflow run: its page on a tracking server, or how to see it
    with a local store (``mlflow ui`` on the database)."""
    ui = _ui(cfg)
    if ui:
        return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} (`mlflow ui --backend-store-uri {cfg.mlflow_tracking_uri}`)"


def model_link(cfg: FlywheelConfig, name: str, version: int) -> str:
    """Where people open a registered model version (see :func:`run_link`)."""
    ui = _ui(cfg)
    return f"{ui}/#/models/{name}/versions/{version}" if ui else f"models:/{name}/{version}"


def artifact_link(cfg: FlywheelConfig, run_id: str, artifact_uri: str, path: str) -> str:
    """Where people open one artifact of a run: the file as a tracking server serves it
    (a browser shows an image inline), or its location in a local store."""
    from urllib.parse import quote

    ui = _ui(cfg)
    if ui:
        return f"{ui}/get-artifact?path={quote(path)}&run_uuid={run_id}"
    return f"{artifact_uri.removeprefix('file://').rstrip('/')}/{path}"
