"""Conventions every flywheel task follows.

- retries with exponential backoff and jitter (config ``prefect.*``);
- a cache key from the digest of the task's inputs plus the task's ``version`` (bump it
  when the code changes what the task produces), so a re-run reuses finished work;
- results persisted to a *saved* storage block referred to by name, so a re-run in a
  new process (``prefect flow-run retry``, a new worker) finds them;
- a task returns a small reference (a :class:`~flywheel.datasets.DatasetRef`), never a
  large object.

Parameters whose value does not change what a task produces are left out of the cache
key: ``parent_run_id`` (MLflow bookkeeping) and, of a ``cfg: FlywheelConfig``, all but
the store root. Config values that shape a task's output are passed as explicit
parameters, so they are in the key.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prefect import task
from prefect.tasks import exponential_backoff

from flywheel import lineage
from flywheel.config import FlywheelConfig, load_config
from flywheel.datasets import digest_of
from flywheel.store import Store, open_store

NOT_IN_CACHE_KEY = frozenset({"parent_run_id"})


def cache_key_for(task_name: str, version: str) -> Callable[[Any, dict], str]:
    def key(_context, parameters: dict) -> str:
        keyed = {}
        for name, value in parameters.items():
            if name in NOT_IN_CACHE_KEY:
                continue
            keyed[name] = value.store_root if isinstance(value, FlywheelConfig) else value
        return f"{task_name}-v{version}-{digest_of(keyed)[:32]}"

    return key


def flywheel_task(*, name: str, version: str, retries: int | None = None,
                  timeout_seconds: float | None = None):
    """Decorate a function as a flywheel task (see the module docstring)."""
    cfg = load_config()

    def decorate(fn):
        return task(
            fn,
            name=name,
            version=version,
            retries=cfg.prefect.task_retries if retries is None else retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=cfg.prefect.retry_backoff_base_s),
            retry_jitter_factor=cfg.prefect.retry_jitter_factor,
            cache_key_fn=cache_key_for(name, version),
            persist_result=True,
            result_storage=f"local-file-system/{cfg.prefect.result_storage_block}",
            timeout_seconds=timeout_seconds,
        )

    return decorate


def store_for(cfg: FlywheelConfig) -> Store:
    """The configured dataset store."""
    return open_store(cfg.store_root, cfg.store)


def writer_options(cfg: FlywheelConfig) -> dict:
    """Keyword arguments of DatasetWriter / write_dataset from the config."""
    return {"shard_max_samples": cfg.datasets.shard_max_samples,
            "shard_max_bytes": cfg.datasets.shard_max_bytes,
            "stale_attempt_hours": cfg.datasets.stale_attempt_hours}


def ensure_result_storage(cfg: FlywheelConfig) -> str:
    """Save (once) the block that persists task results; returns its slug."""
    from prefect.filesystems import LocalFileSystem

    name = cfg.prefect.result_storage_block
    basepath = str(cfg.state_dir / "prefect" / "results")
    try:
        block = LocalFileSystem.load(name)
        if block.basepath == basepath:
            return f"local-file-system/{name}"
    except ValueError:  # not saved yet
        pass
    LocalFileSystem(basepath=basepath).save(name, overwrite=True)
    return f"local-file-system/{name}"


def prefect_run_ids() -> tuple[str | None, str | None]:
    """(flow run id, task run id) of the calling Prefect run, for lineage tags."""
    from prefect.runtime import flow_run, task_run

    return (str(flow_run.id) if flow_run.id else None,
            str(task_run.id) if task_run.id else None)


@contextmanager
def stage(cfg: FlywheelConfig, parent_run_id: str | None, name: str,
          params: dict | None = None) -> Iterator[str]:
    """A nested MLflow stage run tagged with the Prefect flow and task run ids."""
    flow_run_id, task_run_id = prefect_run_ids()
    with lineage.stage_run(cfg, parent_run_id, name, flow_run_id=flow_run_id,
                           task_run_id=task_run_id, params=params) as run_id:
        yield run_id


def log_datasets(run_id: str, *, inputs=(), outputs=()) -> None:
    flow_run_id, _ = prefect_run_ids()
    for ref in inputs:
        lineage.log_dataset(run_id, ref, "input", flow_run_id)
    for ref in outputs:
        lineage.log_dataset(run_id, ref, "output", flow_run_id)


class ProcessResource:
    """One long-lived resource per process (a pool of Ray actors, say), reused by every task
    that asks with the same settings and rebuilt when they change. It needs ``close()``."""

    def __init__(self):
        self._key = self._value = None

    def get(self, key, make):
        if self._value is None or self._key != key:
            self.close()
            self._key, self._value = key, make()
        return self._value

    def close(self) -> None:
        if self._value is not None:
            self._value.close()
        self._key = self._value = None
