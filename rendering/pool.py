"""Render jobs on a pool of Ray actors, each owning one persistent Blender worker.

The same code runs on a laptop and on a cluster (flywheel.core.raypool). Actors reserve
fractional CPUs (a whole CPU per actor can starve Ray on 2-core machines, ENVIRONMENT.md)
or a GPU share when rendering on GPU. A job that fails, times out or kills Blender comes back as a failure with its reason
(to be quarantined by the caller); the worker restarts and the batch goes on. If a whole
actor dies, its job is retried once on another actor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flywheel.core.raypool import ensure_ray, run_on_actors


@dataclass(frozen=True)
class Job:
    id: str
    fn: str  # "rendering.module:function", run inside the Blender worker
    kwargs: dict


@dataclass(frozen=True)
class JobResult:
    id: str
    ok: bool
    result: Any = None  # the job function's JSON reply (None when the job failed)
    reason: str | None = None
    worker: str | None = None


def _actor_class():
    import ray

    @ray.remote(max_restarts=2, max_task_retries=0)
    class RenderActor:
        def __init__(self, index: int, log_dir: str, recycle_after: int, pin_cores: bool):
            from rendering.workers import BlenderWorker

            cores = None
            if pin_cores:
                available = sorted(os.sched_getaffinity(0))
                cores = [available[index % len(available)]]
            self.worker = BlenderWorker(
                log_dir, cores=cores, recycle_after=recycle_after, name=f"blender-{index}-{os.getpid()}"
            )

        def run(self, job: Job, timeout: float) -> JobResult:
            from rendering.workers import RenderFailure

            try:
                return JobResult(job.id, True, self.worker.run(job.fn, job.kwargs, timeout), worker=self.worker.name)
            except RenderFailure as e:
                return JobResult(job.id, False, reason=e.reason, worker=self.worker.name)

        def pid(self) -> int | None:
            return self.worker.pid

        def stop(self) -> None:
            self.worker.stop()

    return RenderActor


class RenderPool:
    """``workers`` actors, created once and reused for every batch until :meth:`close`."""

    def __init__(
        self,
        workers: int,
        log_dir: str,
        *,
        recycle_after: int = 50,
        timeout_s: float = 300,
        num_cpus: float = 0.5,
        num_gpus: float = 0.0,
        pin_cores: bool = True,
        address: str | None = None,
    ):
        ensure_ray(address)
        cls = _actor_class().options(num_cpus=num_cpus, num_gpus=num_gpus)
        self.actors = [cls.remote(i, log_dir, recycle_after, pin_cores) for i in range(workers)]
        self.timeout_s = timeout_s

    def run(self, jobs: Iterable[Job], on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
        """Run ``jobs`` on the actors, as they free up; results in completion order."""
        return run_on_actors(
            self.actors,
            list(jobs),
            lambda actor, job: actor.run.remote(job, self.timeout_s),
            name=lambda job: job.id,
            what="rendered",
            failed=lambda job, reason: JobResult(job.id, False, reason=f"render {reason}"),
            on_result=on_result,
        )

    def worker_pids(self) -> list[int | None]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.get(actor.stop.remote(), timeout=30)
            except Exception:  # already gone
                pass
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
