"""Synthetic-data flows: the mesh library, Iso-3DO renders and Flying Occlusions.

held-out sets' mesh libraries ─> gates
  ─> mesh library (none of their meshes) ─> gate ─┬─> iso3do parts (cached per batch) ─> assemble ─> gate
                                                  └─> occlusion parts (cached per batch) ─> assemble ─> gate
"""

from __future__ import annotations

from prefect import flow

from flows.stages import all_synthetic, flow_config, iso3do, occlusions, run_locked, training_library
from flywheel.core.config import FlywheelConfig
from flywheel.core.records import DatasetRef, RunSummary

SYNTH = {"stage": "synth"}


@flow(name="synth-meshes", log_prints=True)
def synth_meshes(config: FlywheelConfig | str | None = None) -> RunSummary:
    """Build the mesh library to train on (config ``meshes``), without the meshes of the
    held-out sets (config ``rounds``), whose libraries it builds first.

    Args:
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """
    return run_locked(
        flow_config(config), "synth-meshes", lambda cfg, parent: [training_library(cfg, parent)], labels=SYNTH
    )


@flow(name="synth-iso3do", log_prints=True)
def synth_iso3do(config: FlywheelConfig | str | None = None) -> RunSummary:
    """Mesh library -> Iso-3DO renders (config ``iso3do``, ``render``).

    Args:
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """

    def body(cfg: FlywheelConfig, parent: str) -> list[DatasetRef]:
        library = training_library(cfg, parent)
        return [library, iso3do(cfg, library, parent)]

    return run_locked(flow_config(config), "synth-iso3do", body, labels=SYNTH)


@flow(name="synth-occlusions", log_prints=True)
def synth_occlusions(config: FlywheelConfig | str | None = None) -> RunSummary:
    """Mesh library -> Flying Occlusions (config ``occlusions``, ``render``).

    Args:
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """

    def body(cfg: FlywheelConfig, parent: str) -> list[DatasetRef]:
        library = training_library(cfg, parent)
        return [library, occlusions(cfg, library, parent)]

    return run_locked(flow_config(config), "synth-occlusions", body, labels=SYNTH)


@flow(name="synth-all", log_prints=True)
def synth_all(config: FlywheelConfig | str | None = None) -> RunSummary:
    """The whole synthetic-data refresh: mesh library, Iso-3DO and Flying Occlusions.

    Args:
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """
    return run_locked(flow_config(config), "synth-all", all_synthetic, labels=SYNTH)
