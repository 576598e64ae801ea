"""Work on Ray actors: connect (local or cluster) and dispatch jobs to a fixed set of
actors, retrying a job once on another actor when the actor running it dies.

The same code runs on a laptop (``ray.init()`` starts a local Ray) and on a cluster
(``RAY_ADDRESS`` set, or ``address=``); on a cluster the project's code travels with the
job as its working directory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from flywheel.core.config import REPO_ROOT

log = logging.getLogger(__name__)
J = TypeVar("J")
R = TypeVar("R")


def ensure_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={
                "working_dir": str(REPO_ROOT),
                # what the workers do not need: environments, caches (npm packages: ~0.3 GB), state
                "excludes": [".venv*/", ".cache/", ".*_cache/", ".flywheel/", ".git/", "bench/results/"],
            },
        )
        resources = _resources()
        log.info(
            "connected to the Ray cluster at %s (%s CPUs, %s GPUs)",
            address,
            resources.get("CPU"),
            resources.get("GPU", 0),
        )
    else:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        log.info("started a local Ray (%s CPUs)", _resources().get("CPU"))


def _resources() -> dict[str, float]:
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return resources


def cluster_gpus() -> float:
    return float(_resources().get("GPU", 0))


def run_on_actors(
    actors: list[Any],
    jobs: Sequence[J],
    call: Callable[[Any, J], Any],
    *,
    name: Callable[[J], str],
    failed: Callable[[J, str], R],
    what: str = "jobs",
    replace: Callable[[Any], Any] | None = None,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """Run ``call(actor, job)`` (returns an ObjectRef) for every job, as actors free up;
    results in completion order. A job whose actor dies is retried once (on the actor's
    replacement if ``replace`` is given, else on the actor Ray restarted); a second death
    gives ``failed(job, reason)``. ``actors`` is updated in place with replacements."""
    import ray
    from ray.exceptions import RayActorError

    pending = list(jobs)[::-1]
    total = len(pending)
    retried: set[str] = set()
    in_flight: dict[Any, tuple[Any, J]] = {}
    idle = list(actors)
    results: list[R] = []
    started = time.monotonic()
    while pending or in_flight:
        while idle and pending:
            actor, job = idle.pop(), pending.pop()
            in_flight[call(actor, job)] = (actor, job)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        actor, job = in_flight.pop(done[0])
        try:
            result = ray.get(done[0])
        except RayActorError as e:
            if replace is not None:
                fresh = replace(actor)
                actors[actors.index(actor)] = fresh
                actor = fresh
            if name(job) not in retried:
                retried.add(name(job))
                pending.append(job)
                idle.append(actor)
                log.warning("actor died on %s; retrying it once", name(job))
                continue
            result = failed(job, f"actor died twice: {type(e).__name__}")
        idle.append(actor)
        results.append(result)
        if on_result:
            on_result(result)
        if len(results) % max(1, total // 10) == 0 or len(results) == total:
            log.info("%s: %d/%d done in %.0f s", what, len(results), total, time.monotonic() - started)
    return results
