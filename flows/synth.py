"""Synthetic-data flows: the mesh library, Iso-3DO renders and Flying Occlusions.

    mesh library ─> gate ─┬─> iso3do parts (cached per batch) ─> assemble ─> gate
                          └─> occlusion parts (cached per batch) ─> assemble ─> gate

Every dataset passes its validation gate before anything consumes it.
"""

from __future__ import annotations

from prefect import flow

from flywheel import lineage
from flywheel.config import FlywheelConfig, load_config
from flywheel.datasets import Dataset, DatasetRef, digest_of
from tasks.conventions import ensure_result_storage, prefect_run_ids, store_for
from tasks.validation import gate_for
from tasks.synth import (assemble, batches, build_mesh_library, close_render_pool, iso3do_settings,
                         occlusions_settings, render_iso3do_part, render_occlusions_part)


def mesh_library(cfg: FlywheelConfig, parent: str) -> DatasetRef:
    m = cfg.meshes
    limits = {"max_faces": m.max_faces, "max_file_bytes": int(m.max_file_mb * 2**20),
              "max_components": m.max_components}
    library = build_mesh_library(cfg, m.source, m.num_procedural, m.seed, m.occupancy_resolution,
                                 limits, parent_run_id=parent)
    gate_for(cfg, library, parent)
    return library


def iso3do(cfg: FlywheelConfig, library: DatasetRef, parent: str) -> DatasetRef:
    settings = iso3do_settings(cfg)
    ids = sorted(Dataset(store_for(cfg), library.name, library.version).manifest()
                 .column("mesh_id").to_pylist())
    parts = [render_iso3do_part(cfg, library, batch, settings)
             for batch in batches(ids, cfg.iso3do.objects_per_shard)]
    renders = assemble(cfg, "iso3do", library, parts, settings, parent_run_id=parent)
    gate_for(cfg, renders, parent)
    return renders


def occlusions(cfg: FlywheelConfig, library: DatasetRef, parent: str) -> DatasetRef:
    settings = occlusions_settings(cfg)
    indices = list(range(cfg.occlusions.num_samples))
    parts = [render_occlusions_part(cfg, library, batch, settings)
             for batch in batches(indices, cfg.occlusions.samples_per_shard)]
    composites = assemble(cfg, "occlusions", library, parts, settings, parent_run_id=parent)
    gate_for(cfg, composites, parent)
    return composites


def run_round(name: str, body, shaping_sections: tuple[str, ...] = ("meshes", "iso3do", "occlusions")) -> dict:
    """Run ``body(cfg, parent_run_id) -> [DatasetRef]`` as one MLflow round with Blender workers;
    the round's identity is the store and the config sections that shape what it makes."""
    cfg = load_config()
    ensure_result_storage(cfg)
    # The round is what it makes: re-running it after a fix or an override resumes its MLflow run.
    shaping = cfg.model_dump(mode="json", include=set(shaping_sections))
    round_id = f"{name}-{digest_of({'store': cfg.store_root, **shaping})[:10]}"
    parent = lineage.start_round(cfg, round_id, flow_run_id=prefect_run_ids()[0])
    try:
        refs = body(cfg, parent)
    except BaseException:
        lineage.end_round(parent, failed=True)
        raise
    finally:
        close_render_pool()
    lineage.end_round(parent)
    for ref in refs:
        print(f"{ref}: {ref.num_rows} rows  {ref.uri}")
    return {"round": round_id, "mlflow_run_id": parent, "datasets": [r.to_dict() for r in refs]}


@flow(name="synth-meshes", log_prints=True)
def synth_meshes() -> dict:
    """Build the mesh library (config ``meshes``)."""
    return run_round("synth-meshes", lambda cfg, parent: [mesh_library(cfg, parent)])


@flow(name="synth-iso3do", log_prints=True)
def synth_iso3do() -> dict:
    """Mesh library -> Iso-3DO renders (config ``iso3do``, ``render``)."""
    def body(cfg, parent):
        library = mesh_library(cfg, parent)
        return [library, iso3do(cfg, library, parent)]
    return run_round("synth-iso3do", body)


@flow(name="synth-occlusions", log_prints=True)
def synth_occlusions() -> dict:
    """Mesh library -> Flying Occlusions (config ``occlusions``, ``render``)."""
    def body(cfg, parent):
        library = mesh_library(cfg, parent)
        return [library, occlusions(cfg, library, parent)]
    return run_round("synth-occlusions", body)


def all_synthetic(cfg: FlywheelConfig, parent: str) -> list[DatasetRef]:
    """Mesh library, then Iso-3DO and Flying Occlusions from it."""
    library = mesh_library(cfg, parent)
    return [library, iso3do(cfg, library, parent), occlusions(cfg, library, parent)]


@flow(name="synth-all", log_prints=True)
def synth_all() -> dict:
    """The whole synthetic-data refresh: mesh library, Iso-3DO and Flying Occlusions."""
    return run_round("synth-all", all_synthetic)
