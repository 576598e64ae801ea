"""Conventions every flywheel task follows.

- its first parameter is the config (``cfg: FlywheelConfig``), passed down from the entry
  point: retries with exponential backoff and jitter and the result storage come from its
  ``prefect`` section when the task is called, never from a config read at import;
- a cache key from the digest of the task's inputs plus the task's ``version`` (bump it
  when the code changes what the task produces: the same number versions the datasets the
  task commits, see :attr:`FlywheelTask.version`), so a re-run reuses finished work;
- results persisted to a *saved* storage block referred to by name, so a re-run in a
  new process (``prefect flow-run retry``, a new worker) finds them;
- a task returns a small typed reference (:mod:`flywheel.core.records`), never a large
  object.

Parameters whose value does not change what a task produces are left out of the cache
key: ``parent_run_id`` (MLflow bookkeeping) and, of the config, all but what
:func:`~flywheel.core.config.shaping` keeps with no section (the store root). Config values
that shape a task's output are passed as explicit parameters, so they are in the key.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, ParamSpec, TypeVar

from prefect import Task, task
from prefect.tasks import exponential_backoff

from flywheel.core.config import FlywheelConfig, PrefectConfig, shaping
from flywheel.core.datasets import committed_ref
from flywheel.core.digests import digest_of
from flywheel.core.records import CheckpointRef, DatasetRef, RewardRef, RunSummary
from flywheel.core.store import Store, open_store
from flywheel.tracking import lineage

log = logging.getLogger(__name__)
NOT_IN_CACHE_KEY = frozenset({"parent_run_id"})
P = ParamSpec("P")
R = TypeVar("R")
#: a task run's name from its parameters: what ran, in the Prefect UI (``train-sft``, not ``train-10c``)
RunName = Callable[[dict[str, Any]], str]


def cache_key_for(task_name: str, version: str) -> Callable[[Any, dict[str, Any]], str]:
    def key(_context: Any, parameters: dict[str, Any]) -> str:
        keyed = {
            name: shaping(value, ()) if isinstance(value, FlywheelConfig) else value
            for name, value in parameters.items()
            if name not in NOT_IN_CACHE_KEY
        }
        return f"{task_name}-v{version}-{digest_of(keyed)[:32]}"

    return key


class FlywheelTask(Generic[P, R]):
    """A Prefect task configured, when called, by the config it is called with."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str,
        version: str,
        retries: int | None,
        timeout_seconds: float | None,
        run_name: RunName | None,
    ):
        self.fn, self.name, self.version, self._retries = fn, name, version, retries

        def task_run_name(parameters: dict[str, Any]) -> str:  # Prefect passes an argument named so
            return run_name(parameters) if run_name else name

        self._task: Task[P, R] = task(  # type: ignore[call-overload]  # the overloads want cache_key_fn's exact type
            fn,
            name=name,
            task_run_name=task_run_name,
            version=version,
            cache_key_fn=cache_key_for(name, version),
            persist_result=True,
            timeout_seconds=timeout_seconds,
        )
        self._configured: dict[tuple[Any, ...], Task[P, R]] = {}
        functools.update_wrapper(self, fn)

    def configured(self, settings: PrefectConfig) -> Task[P, R]:
        """The Prefect task with ``settings``' retries and result storage."""
        retries = settings.task_retries if self._retries is None else self._retries
        key = (retries, settings.retry_backoff_base_s, settings.retry_jitter_factor, settings.result_storage_block)
        if key not in self._configured:
            self._configured[key] = self._task.with_options(
                retries=retries,
                retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_backoff_base_s),
                retry_jitter_factor=settings.retry_jitter_factor,
                result_storage=f"local-file-system/{settings.result_storage_block}",
            )
        return self._configured[key]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        cfg = next((a for a in (*args, *kwargs.values()) if isinstance(a, FlywheelConfig)), None)
        task = self.configured(cfg.prefect if cfg is not None else PrefectConfig())
        result = task(*args, **kwargs)
        gone = missing_outputs(store_for(cfg), result) if cfg is not None else []
        if gone:  # a cached result whose output was removed (`datasets repair`): make it again
            log.warning("%s: cached output %s no longer exists; running the task again", self.name, ", ".join(gone))
            result = task.with_options(refresh_cache=True)(*args, **kwargs)
        return result


def flywheel_task(
    *,
    name: str,
    version: str,
    retries: int | None = None,
    timeout_seconds: float | None = None,
    run_name: RunName | None = None,
) -> Callable[[Callable[P, R]], FlywheelTask[P, R]]:
    """Decorate a function as a flywheel task (see the module docstring); ``retries`` fixes
    the retries whatever the config says (0: a failure that is not transient); ``run_name``
    names each run from its parameters (default: the task's name)."""

    def decorate(fn: Callable[P, R]) -> FlywheelTask[P, R]:
        return FlywheelTask(
            fn, name=name, version=version, retries=retries, timeout_seconds=timeout_seconds, run_name=run_name
        )

    return decorate


class Progress:
    """A progress artifact on the running flow's page in the Prefect UI (0-100 %), for work
    that takes minutes: rendering parts, training steps."""

    def __init__(self, description: str):
        from prefect.artifacts import create_progress_artifact

        self.description = description
        made = create_progress_artifact(0.0, description=description)
        assert not inspect.isawaitable(made), "called from synchronous code: Prefect returns the id"
        self.id = made

    def update(self, done: int, total: int) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(
            self.id, 100.0 * done / max(total, 1), description=f"{self.description}: {done}/{total}"
        )


class ProgressTrainLog:
    """A :class:`sam3d_model.train.TrainLog` that reports to ``inner`` (MLflow) and moves a
    :class:`Progress` artifact as the steps go by."""

    def __init__(self, inner: Any, stage: str, total_steps: int):
        self.inner, self.total = inner, total_steps
        self.progress = Progress(f"training {stage}, steps")

    def params(self, params: dict) -> None:
        self.inner.params(params)

    def metrics(self, values: dict, step: int) -> None:
        self.inner.metrics(values, step)
        self.progress.update(step, self.total)

    def finished(self, stage: str, history: list[dict]) -> None:
        self.inner.finished(stage, history)
        self.progress.update(self.total, self.total)


class FollowedTraining:
    """While a stage trains in other processes (Ray Train workers; rank 0 logs its steps to the
    MLflow run ``run_id``), a :class:`Progress` artifact that follows the run's latest logged
    step, read every ``every_s`` seconds by a thread (a context manager)."""

    def __init__(self, run_id: str, stage: str, total_steps: int, every_s: float = 5.0):
        self.run_id, self.total, self.every_s = run_id, total_steps, every_s
        self.progress = Progress(f"training {stage}, steps")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"follow-{stage}", daemon=True)

    def __enter__(self) -> FollowedTraining:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self.progress.update(self.total, self.total)

    def _follow(self) -> None:
        from mlflow.tracking import MlflowClient

        client, shown = MlflowClient(), 0
        while not self._stop.wait(self.every_s):
            try:
                step = max((m.step for m in client.get_metric_history(self.run_id, "loss")), default=0)
                if step > shown:
                    self.progress.update(step, self.total)
                    shown = step
            except Exception as e:  # a progress bar never fails the training it shows
                log.debug("progress of run %s: %s", self.run_id, e)


def short(ref: DatasetRef) -> str:
    """``name@ab12``: a dataset version as a run name shows it."""
    return f"{ref.name}@{ref.version[:4]}"


def missing_outputs(store: Store, result: Any) -> list[str]:
    """The dataset versions and store checkpoints ``result`` refers to that are not in ``store``
    (any more): a cached task result must never hand on a dangling reference."""
    if isinstance(result, DatasetRef):
        return [] if committed_ref(store, result.name, result.version) else [str(result)]
    if isinstance(result, CheckpointRef):
        return [result.uri] if result.key is not None and not store.exists(result.key) else []
    if isinstance(result, RewardRef):
        return missing_outputs(store, result.checkpoint)
    if isinstance(result, RunSummary):
        return missing_outputs(store, result.datasets)
    if isinstance(result, (list, tuple)):
        return [m for item in result for m in missing_outputs(store, item)]
    if isinstance(result, dict):
        return [m for item in result.values() for m in missing_outputs(store, item)]
    return []


def store_for(cfg: FlywheelConfig) -> Store:
    """The configured dataset store."""
    return open_store(cfg.store_root, cfg.store)


def writer_options(cfg: FlywheelConfig) -> dict[str, Any]:
    """Keyword arguments of DatasetWriter / write_dataset from the config."""
    return {
        "shard_max_samples": cfg.datasets.shard_max_samples,
        "shard_max_bytes": cfg.datasets.shard_max_bytes,
        "stale_attempt_hours": cfg.datasets.stale_attempt_hours,
    }


#: Bump when :func:`prepare_state` does more on a fresh state folder.
STATE_SETUP_VERSION = 1


def prepare_state(cfg: FlywheelConfig) -> None:
    """Set a fresh state folder up once, serialised across processes (an ``flock``): the MLflow
    and the ephemeral Prefect SQLite databases are created and migrated here, so that two
    first runs started together do not race on their migrations ("table ... already exists").
    Later runs see the marker and return at once."""
    import fcntl

    marker = cfg.state_dir / f".state-setup-v{STATE_SETUP_VERSION}"
    if marker.exists():
        return
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.state_dir / "setup.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other first run waits here, then finds the marker
        if marker.exists():
            return
        if cfg.mlflow_tracking_uri.startswith("sqlite:"):
            from mlflow.tracking import MlflowClient

            MlflowClient(cfg.mlflow_tracking_uri).search_experiments(max_results=1)  # creates and migrates
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():  # the ephemeral server's own database
            import asyncio

            from prefect.server.database import provide_database_interface

            asyncio.run(provide_database_interface().create_db())
        marker.touch()


def ensure_result_storage(cfg: FlywheelConfig) -> str:
    """Save (once) the block that persists task results; returns its slug."""
    from prefect.filesystems import LocalFileSystem

    name = cfg.prefect.result_storage_block
    basepath = str(cfg.state_dir / "prefect" / "results")
    try:
        block = LocalFileSystem.load(name)  # a block, not a coroutine: this is sync code
        if block.basepath == basepath:  # type: ignore[union-attr]
            return f"local-file-system/{name}"
    except ValueError:  # not saved yet
        pass
    LocalFileSystem(basepath=basepath).save(name, overwrite=True)
    return f"local-file-system/{name}"


def prefect_run_ids() -> tuple[str | None, str | None]:
    """(flow run id, task run id) of the calling Prefect run, for lineage tags."""
    from prefect.runtime import flow_run, task_run

    return (str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)


@contextmanager
def stage(
    cfg: FlywheelConfig, parent_run_id: str | None, name: str, params: dict[str, Any] | None = None
) -> Iterator[str]:
    """A nested MLflow stage run tagged with the Prefect flow and task run ids."""
    flow_run_id, task_run_id = prefect_run_ids()
    with lineage.stage_run(
        cfg, parent_run_id, name, flow_run_id=flow_run_id, task_run_id=task_run_id, params=params
    ) as run_id:
        yield run_id


def log_datasets(
    run_id: str,
    *,
    inputs: tuple[DatasetRef, ...] | list[DatasetRef] = (),
    outputs: tuple[DatasetRef, ...] | list[DatasetRef] = (),
) -> None:
    flow_run_id, _ = prefect_run_ids()
    for ref in inputs:
        lineage.log_dataset(run_id, ref, "input", flow_run_id)
    for ref in outputs:
        lineage.log_dataset(run_id, ref, "output", flow_run_id)


class ProcessResource:
    """One long-lived resource per process (a pool of Ray actors, say), reused by every task
    that asks with the same settings and rebuilt when they change. It needs ``close()``."""

    def __init__(self) -> None:
        self._key: Any = None
        self._value: Any = None

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if self._value is None or self._key != key:
            self.close()
            self._key, self._value = key, make()
        return self._value

    def close(self) -> None:
        if self._value is not None:
            self._value.close()
        self._key = self._value = None
