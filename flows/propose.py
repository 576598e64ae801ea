"""The propose half of a round: the image pool -> candidates from the ensemble (on Ray,
cached per part) -> previews and annotation tasks.

    image pool ─> gate ─> candidate parts (cached per part) ─> assemble ─> gate ─> previews + tasks
"""

from __future__ import annotations

from prefect import flow

from flows.stages import candidates, flow_config, image_pool, publish, run_locked
from flywheel.core.config import FlywheelConfig
from flywheel.core.records import DatasetRef, RunSummary


def propose_body(cfg: FlywheelConfig, parent: str) -> list[DatasetRef]:
    pool = image_pool(cfg, parent)
    proposals = candidates(cfg, pool, parent)
    publish(cfg, proposals, pool, parent)
    return [pool, proposals]


@flow(name="propose", log_prints=True)
def propose(config: FlywheelConfig | str | None = None) -> RunSummary:
    """Image pool -> candidates (config ``candidates``) -> previews and annotation tasks.

    Args:
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """
    return run_locked(flow_config(config), "propose", propose_body, ("candidates",), {"stage": "propose"})
