"""Process environment that makes a new user's first run work; no orchestrator imports here.

Prefect reads its settings when it is imported, so :func:`apply_environment` must run
before ``import prefect`` (``tasks/__init__.py`` and the CLI call it first). Values the
user already set are kept.
"""

from __future__ import annotations

import os

from flywheel.config import FlywheelConfig, load_config


def apply_environment(cfg: FlywheelConfig | None = None) -> FlywheelConfig:
    cfg = cfg or load_config()
    state = cfg.state_dir
    defaults = {
        # Keep Prefect's database, results and logs with the project's other local state.
        "PREFECT_HOME": str(state / "prefect"),
        # A fresh ephemeral database takes 17-26 s to start; Prefect's default allows 20 s.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(cfg.prefect.ephemeral_startup_timeout_s),
        # Analytics on: "database is locked" noise with the ephemeral SQLite server.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # Progress lines from domain code (shards written, objects done) reach the Prefect UI.
        "PREFECT_LOGGING_EXTRA_LOGGERS": "flywheel,rendering,sam3d_model",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Prefect creates its home without parents and then fails to open its database.
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    return cfg
