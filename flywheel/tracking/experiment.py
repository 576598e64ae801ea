"""The MLflow tracking store and experiment a config names."""

from __future__ import annotations

from flywheel.core.config import FlywheelConfig


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
            mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=artifacts)
        except MlflowException:  # created meanwhile by a concurrent stage
            pass
    return mlflow.set_experiment(cfg.mlflow.experiment).experiment_id
