"""Tasks of the synthetic-data stages: mesh library, Iso-3DO renders, Flying Occlusions.

Rendering work is split into batch-sized parts, each a cached task that commits its own
``<kind>-part`` dataset version; a re-run of a killed flow finds the finished parts
committed and renders only the missing ones. The assemble task copies the parts' shards
into the final version (nothing is rendered twice) and records the stage in MLflow.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from flywheel.core.config import FlywheelConfig, MeshLibraryConfig
from flywheel.core.contracts import ISO3DO, MESHES, OCCLUSIONS, DatasetSpec, part_spec
from flywheel.core.datasets import Dataset, DatasetWriter, assemble_dataset, committed_ref, version_of
from flywheel.core.records import DatasetRef, Rejected
from rendering.mesh_library import library_samples, procedural_items, source_items
from rendering.meshes import PROCEDURAL_FAMILIES, CleanMesh, MeshFilter
from rendering.parts import iso3do_part, occlusions_part
from rendering.pool import RenderPool
from tasks.conventions import ProcessResource, flywheel_task, log_datasets, stage, store_for, writer_options
from tasks.sheets import log_image_sheet

log = logging.getLogger(__name__)
_RENDER_POOL = ProcessResource()


def render_pool(cfg: FlywheelConfig) -> RenderPool:
    """The process's Blender workers, started once and reused by every render task."""
    r = cfg.render
    return _RENDER_POOL.get(
        r.model_dump(),
        lambda: RenderPool(
            r.workers,
            str(cfg.state_dir / "logs" / "blender"),
            recycle_after=r.recycle_after,
            timeout_s=r.timeout_s,
            num_cpus=r.actor_num_cpus,
            num_gpus=r.actor_num_gpus if r.device == "GPU" else 0.0,
            pin_cores=r.pin_cores,
        ),
    )


close_render_pool = _RENDER_POOL.close


def _write_part(cfg, spec: DatasetSpec, version: str, inputs: dict, produce) -> DatasetRef:
    """Commit one part: ``produce(writer)`` adds samples and quarantines failures."""
    store = store_for(cfg)
    pspec = part_spec(spec)
    existing = committed_ref(store, pspec.name, version)
    if existing is not None:
        return existing
    with DatasetWriter(store, pspec, version, inputs=inputs, **writer_options(cfg)) as writer:
        produce(writer)
    return writer.ref


# -- mesh library -----------------------------------------------------------------------------

NEWER_LIMITS = ("min_main_component_share", "min_extent_ratio")


def mesh_limits(m: MeshLibraryConfig) -> dict:
    """The mesh filters' limits (rendering.meshes.MeshFilter fields) of a mesh config."""
    return {
        "max_faces": m.max_faces,
        "max_file_bytes": int(m.max_file_mb * 2**20),
        "max_components": m.max_components,
        # the newer thresholds join the limits (and the version) only when set to other than their default
        **{k: getattr(m, k) for k in NEWER_LIMITS if getattr(m, k) != type(m).model_fields[k].default},
    }


@flywheel_task(
    name="mesh-library",
    version="2",
    run_name=lambda p: f"mesh-library-seed-{p['seed']}" + (" + source" if p["source"] else ""),
)
def build_mesh_library(
    cfg: FlywheelConfig,
    source: str | None,
    contents: str | None,
    num_procedural: int,
    seed: int,
    resolution: int,
    limits: dict,
    family_balance: bool | None = None,
    up_axis: str = "auto",
    families: tuple[str, ...] = PROCEDURAL_FAMILIES,
    held_out: tuple[DatasetRef, ...] = (),
    parent_run_id: str | None = None,
) -> DatasetRef:
    """Ingest, filter, de-duplicate and voxelise meshes into a ``meshes`` dataset version.
    ``contents``: :func:`rendering.mesh_library.source_contents` of a user source (None for
    the procedural one, which its seed and count describe). A mesh with the surface of one in
    the ``held_out`` libraries (those the evaluations score as unseen) is quarantined."""
    store = store_for(cfg)
    inputs: dict[str, Any] = {
        "source": source,
        "num_procedural": num_procedural if source is None else None,
        "families": list(families) if source is None else None,
        "seed": seed,
        "resolution": resolution,
        "limits": limits,
    }
    if source is not None:  # the version of a user library is its contents, not its path
        inputs.update(contents=contents, up_axis=up_axis)
    if family_balance is not None and family_balance != (source is None):  # only when not the default
        inputs["family_balance"] = family_balance
    if held_out:  # a library without any keeps the version it had before held-out libraries were inputs
        inputs["held_out"] = list(held_out)
    version = version_of(MESHES, inputs=inputs, code_version=build_mesh_library.version)
    filt = MeshFilter(**limits)
    with stage(
        cfg, parent_run_id, "mesh-library", params={"source": source or "procedural", "resolution": resolution}
    ) as run_id:
        ref = committed_ref(store, MESHES.name, version)
        if ref is None:
            with tempfile.TemporaryDirectory(prefix="flywheel-meshes-") as tmp:
                items = (
                    procedural_items(seed, num_procedural, tuple(families))
                    if source is None
                    else source_items(source, cfg.store, filt, Path(tmp), up_axis)
                )
                unseen = _library_meshes(store, held_out)
                with DatasetWriter(store, MESHES, version, inputs=inputs, parents=held_out, **writer_options(cfg)) as w:
                    for n, item in enumerate(library_samples(items, resolution, filt, unseen), 1):
                        if isinstance(item, Rejected):
                            log.warning(
                                "mesh quarantined: %s",
                                item.detail if item.item_id in item.detail else f"{item.item_id}: {item.detail}",
                            )
                        elif item.warnings:
                            log.warning(
                                "mesh %s accepted: %s", item.row["source"], "; ".join(x.detail for x in item.warnings)
                            )
                        w.put(item, "mesh")
                        if n % 20 == 0:
                            log.info("mesh library: %d items processed", n)
                ref = w.ref
        dataset = Dataset(store, ref.name, ref.version)
        reasons = Counter(dataset.quarantine().column("reason").to_pylist())
        mlflow.log_metrics(
            {
                "meshes_accepted": ref.num_rows,
                "meshes_rejected": sum(reasons.values()),
                "meshes_with_warnings": (dataset.marker.get("warnings") or {}).get("rows", 0),
                **{f"rejected_{r.replace(' ', '_')}": n for r, n in reasons.items()},
            }
        )
        log_datasets(run_id, inputs=held_out, outputs=[ref])
        log_image_sheet(dataset, "meshes_sheet.png", kind="mesh")
    return ref


def _library_meshes(store, libraries: tuple[DatasetRef, ...]) -> Iterator[tuple[CleanMesh, str]]:
    """Each mesh of ``libraries``, with its source and library (``procedural:999/3 (meshes@V)``)."""
    for ref in libraries:
        library = Dataset(store, ref.name, ref.version)
        manifest = library.manifest()
        sources = dict(zip(manifest.column("sample_key").to_pylist(), manifest.column("source").to_pylist()))
        for sample in library.samples():
            yield CleanMesh.from_npz(sample["mesh.npz"]), f"{sources[sample['__key__']]} ({ref})"


# -- Iso-3DO ----------------------------------------------------------------------------------


@flywheel_task(
    name="iso3do-part", version="1", run_name=lambda p: f"iso3do-part-{p['object_ids'][0]}+{len(p['object_ids']) - 1}"
)
def render_iso3do_part(cfg: FlywheelConfig, library: DatasetRef, object_ids: list[str], settings: dict) -> DatasetRef:
    """Render one batch of objects (every view) into a committed ``iso3do-part`` version."""
    inputs = {"library": library, "objects": object_ids, "settings": settings}
    version = version_of(ISO3DO, inputs=inputs, code_version=render_iso3do_part.version)

    def produce(writer: DatasetWriter) -> None:
        lib = Dataset(store_for(cfg), library.name, library.version)
        with tempfile.TemporaryDirectory(prefix="flywheel-iso3do-") as tmp:
            for item in iso3do_part(lib, object_ids, settings, render_pool(cfg).run, Path(tmp)):
                writer.put(item)

    return _write_part(cfg, ISO3DO, version, inputs, produce)


def iso3do_settings(cfg: FlywheelConfig) -> dict:
    """The settings that shape the renders (so they are in every cache key and version)."""
    s = cfg.iso3do.model_dump(exclude={"objects_per_shard"})
    return {**s, "elevation_deg": list(s["elevation_deg"]), "device": cfg.render.device}


# -- Flying Occlusions ------------------------------------------------------------------------


def occlusions_settings(cfg: FlywheelConfig) -> dict:
    s = cfg.occlusions.model_dump(exclude={"samples_per_shard", "num_samples"})
    return {
        **s,
        "visible_band": list(s["visible_band"]),
        "elevation_deg": list(s["elevation_deg"]),
        "device": cfg.render.device,
    }


@flywheel_task(
    name="occlusions-part", version="3", run_name=lambda p: f"occlusions-part-{p['indices'][0]}-{p['indices'][-1]}"
)
def render_occlusions_part(cfg: FlywheelConfig, library: DatasetRef, indices: list[int], settings: dict) -> DatasetRef:
    """Sample, test and render one batch of occluder/occludee pairs on photos."""
    inputs = {"library": library, "indices": indices, "settings": settings}
    version = version_of(OCCLUSIONS, inputs=inputs, code_version=render_occlusions_part.version)

    def produce(writer: DatasetWriter) -> None:
        lib = Dataset(store_for(cfg), library.name, library.version)
        with tempfile.TemporaryDirectory(prefix="flywheel-fo-") as tmp:
            for item in occlusions_part(lib, indices, settings, cfg.store, render_pool(cfg).run, Path(tmp)):
                writer.put(item)

    return _write_part(cfg, OCCLUSIONS, version, inputs, produce)


# -- assembly ---------------------------------------------------------------------------------


@flywheel_task(name="assemble", version="1", run_name=lambda p: f"assemble-{p['kind']}")
def assemble(
    cfg: FlywheelConfig,
    kind: str,
    library: DatasetRef,
    parts: list[DatasetRef],
    settings: dict,
    parent_run_id: str | None = None,
) -> DatasetRef:
    """Commit the final dataset from its parts and record the stage in MLflow."""
    spec = {"iso3do": ISO3DO, "occlusions": OCCLUSIONS}[kind]
    store = store_for(cfg)
    version = version_of(
        spec,
        inputs={"library": library, "settings": settings, "parts": [p.version for p in parts]},
        code_version=assemble.version,
    )
    with stage(cfg, parent_run_id, kind, params={k: str(v) for k, v in settings.items()}) as run_id:
        ref = assemble_dataset(
            store,
            spec,
            version,
            parts,
            inputs={"library": library, "settings": settings},
            parents=[library],
            **writer_options(cfg),
        )
        dataset = Dataset(store, ref.name, ref.version)
        reasons = Counter(dataset.quarantine().column("reason").to_pylist())
        manifest = dataset.manifest()
        metrics: dict[str, float] = {
            "rows": ref.num_rows,
            "quarantined": sum(reasons.values()),
            **{f"quarantined_{r.replace(' ', '_')}": n for r, n in reasons.items()},
        }
        if kind == "iso3do" and ref.num_rows:
            metrics.update(objects=len(set(manifest.column("object_id").to_pylist())))
        if kind == "occlusions" and ref.num_rows:
            tries = np.array(manifest.column("tries").to_pylist())
            vf = np.array(manifest.column("visible_fraction").to_pylist())
            metrics.update(tries_per_accepted=float(tries.mean()), visible_fraction_mean=float(vf.mean()))
        mlflow.log_metrics(metrics)
        log_datasets(run_id, inputs=[library], outputs=[ref])
        log_image_sheet(dataset, f"{kind}_sheet.png", kind="rgb")
        log.info("%s: %s", ref, metrics)
    return ref


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
