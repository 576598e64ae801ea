"""Process environment that makes a new user's first run work; no orchestrator imports here.

Prefect reads its settings when it is imported, so :func:`apply_environment` must run
before ``import prefect``: the CLI calls it before it imports a flow; a flow started by a
worker calls it at its start (the worker's own environment set Prefect up). Values the
user already set are kept.
"""

from __future__ import annotations

import logging
import os

from flywheel.core.config import FlywheelConfig

PROJECT_LOGGERS = ("flywheel", "rendering", "sam3d_model", "tasks", "flows")


def apply_environment(cfg: FlywheelConfig) -> FlywheelConfig:
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
        "PREFECT_LOGGING_EXTRA_LOGGERS": ",".join(PROJECT_LOGGERS),
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Services named in the config win over the environment: "run on the stack" is config only.
    if cfg.prefect.api_url:
        os.environ["PREFECT_API_URL"] = cfg.prefect.api_url
    if cfg.ray.address:
        os.environ["RAY_ADDRESS"] = cfg.ray.address
    if cfg.ray.auth_token_path:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(cfg.ray.auth_token_path)
    # Progress (shards written, renders done) is INFO; the root logger's WARNING would drop it.
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    # Prefect creates its home without parents and then fails to open its database.
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    return cfg


class _TracebacksToFile(logging.Formatter):
    """A console formatter that prints a record's message without its traceback and appends
    the traceback to ``path`` instead (the record itself is left whole for other handlers,
    such as the one that sends logs to the Prefect API)."""

    def __init__(self, inner: logging.Formatter | None, path: str | os.PathLike[str]):
        super().__init__()
        self.inner, self.path = inner or logging.Formatter(), path

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        with open(self.path, "a") as f:
            f.write(f"{self.formatTime(record)} {record.name} {record.levelname}: {record.getMessage()}\n")
            f.write((record.exc_text or self.formatException(record.exc_info)) + "\n\n")  # type: ignore[arg-type]
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record) + f"  (traceback: {self.path})"
        finally:
            record.exc_info, record.exc_text = saved


def tracebacks_to_file(path: str | os.PathLike[str]) -> None:
    """Every console handler configured now prints tracebacks to ``path`` instead of the
    terminal: a failure then ends in its one clear error line (``--debug`` keeps them)."""
    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            if (console or type(handler).__name__ == "PrefectConsoleHandler") and not isinstance(
                handler.formatter, _TracebacksToFile
            ):
                handler.setFormatter(_TracebacksToFile(handler.formatter, path))
