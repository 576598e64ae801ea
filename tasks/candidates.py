"""Tasks of the propose stage: image pool, candidates (cached per part, on Ray), previews
and annotation task files.

Each part task commits its own ``proposals-part`` version, so a re-run after a crash
proposes only the missing parts; the assemble task copies the parts' shards. The candidates
annotators see are selected from the proposals (:mod:`tasks.reward`).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np

from flywheel.core.codecs import decode_npy
from flywheel.core.config import FlywheelConfig
from flywheel.core.contracts import IMAGE_POOL, PROPOSALS, PROPOSALS_PART
from flywheel.core.datasets import Dataset, DatasetWriter, assemble_dataset, committed_ref, version_of
from flywheel.core.records import DatasetRef, Rejected
from flywheel.feedback.image_pool import from_dataset, from_manifest, unique
from flywheel.feedback.publish import TaskFiles, publish_tasks
from flywheel.learning.ensemble import PinnedModel, local_checkpoints
from flywheel.learning.serving import ProposalPool, proposal_items
from sam3d_model.ensemble import Member
from tasks.conventions import ProcessResource, flywheel_task, log_datasets, short, stage, store_for, writer_options
from tasks.synth import render_pool

log = logging.getLogger(__name__)
_PROPOSAL_POOL = ProcessResource()


def proposal_pool(
    cfg: FlywheelConfig, checkpoints: dict, members: list[dict], library, num_candidates: int
) -> ProposalPool:
    """The process's proposal actors, started once per ensemble and reused by every part."""
    c = cfg.candidates
    key = (
        tuple(sorted((k, v[1]) for k, v in checkpoints.items())),
        str(members),
        num_candidates,
        c.actors,
        c.actor_num_cpus,
        c.actor_num_gpus,
        library is not None and tuple(library[0]),  # the library's sample keys
    )
    return _PROPOSAL_POOL.get(
        key,
        lambda: ProposalPool(
            checkpoints,
            tuple(Member(**m) for m in members),
            num_candidates=num_candidates,
            library=library,
            actors=c.actors,
            num_cpus=c.actor_num_cpus,
            num_gpus=c.actor_num_gpus,
        ),
    )


close_proposal_pool = _PROPOSAL_POOL.close


# -- image pool -------------------------------------------------------------------------------


@flywheel_task(
    name="image-pool", version="1", run_name=lambda p: f"image-pool-from-{p['source']}@{p['source_version'][:4]}"
)
def build_image_pool(
    cfg: FlywheelConfig,
    source: str,
    source_version: str,
    max_image_bytes: int,
    mask_error: float = 0.0,
    parent_run_id: str | None = None,
) -> DatasetRef:
    """Commit the round's (image, mask) pairs; bad items are quarantined with their reason.
    ``source_version``: the dataset version or the manifest file's digest (in the cache key);
    ``mask_error``: a dataset's masks as a segmenter would give them (the "real" world)."""
    store = store_for(cfg)
    inputs = {"source": source, "source_version": source_version, "max_image_bytes": max_image_bytes}
    if mask_error:
        inputs["mask_error"] = mask_error
    version = version_of(IMAGE_POOL, inputs=inputs, code_version=build_image_pool.version)
    with stage(cfg, parent_run_id, "image-pool", params={"source": source}) as run_id:
        ref = committed_ref(store, IMAGE_POOL.name, version)
        parents = []
        if ref is None:
            if Path(source).suffix in (".jsonl", ".csv"):
                items = from_manifest(source, cfg.store, max_image_bytes)
            else:
                dataset = Dataset(store, source.partition("@")[0], source_version)
                parents = [dataset.ref]
                items = from_dataset(dataset, mask_error)
            with DatasetWriter(
                store, IMAGE_POOL, version, inputs=inputs, parents=parents, **writer_options(cfg)
            ) as writer:
                for item in unique(items):
                    if isinstance(item, Rejected):
                        log.warning("image quarantined: %s", item.detail)
                    writer.put(item, "image")
            ref = writer.ref
        pool = Dataset(store, ref.name, ref.version)
        reasons = Counter(pool.quarantine().column("reason").to_pylist())
        mlflow.log_metrics(
            {
                "objects": ref.num_rows,
                "quarantined": sum(reasons.values()),
                **{f"quarantined_{r.replace(' ', '_')}": n for r, n in reasons.items()},
            }
        )
        log_datasets(run_id, inputs=parents, outputs=[ref])
    return ref


# -- candidates -------------------------------------------------------------------------------


def _library(cfg: FlywheelConfig, libraries: list[DatasetRef], resolution: int):
    """(sample keys, occupancy grids) of every shape the retrieval members may return: a mesh
    library, and the accepted winners and artist meshes of earlier rounds (their ``occ.npy``)."""
    ids, grids = [], []
    for library in libraries:
        for s in Dataset(store_for(cfg), library.name, library.version).samples():
            occ = decode_npy(s["occ.npy"])
            if occ.shape == (resolution,) * 3 and s["__key__"] not in ids:
                ids.append(s["__key__"])
                grids.append(occ)
    return (ids, np.stack(grids)) if ids else None


@flywheel_task(
    name="proposals-part",
    version="1",
    run_name=lambda p: f"proposals-part-{p['object_ids'][0]}+{len(p['object_ids']) - 1}",
)
def propose_part(
    cfg: FlywheelConfig,
    pool: DatasetRef,
    object_ids: list[str],
    models: dict[str, PinnedModel],
    members: list[dict],
    libraries: list[DatasetRef],
    settings: dict,
) -> DatasetRef:
    """Propose candidates for one part of the pool, on the Ray actors; commit a part."""
    inputs = {
        "pool": pool,
        "objects": object_ids,
        "models": models,
        "members": members,
        "libraries": libraries,
        "settings": settings,
    }
    version = version_of(PROPOSALS, inputs=inputs, code_version=propose_part.version)
    store = store_for(cfg)
    existing = committed_ref(store, PROPOSALS_PART.name, version)
    if existing is not None:
        return existing
    checkpoints, model_cfg = local_checkpoints(cfg, models)
    library = _library(cfg, libraries, model_cfg.resolution)
    actors = proposal_pool(cfg, checkpoints, members, library, settings["num_candidates"])
    items = proposal_items(
        Dataset(store, pool.name, pool.version),
        object_ids,
        model_cfg,
        job_prefix=version[:12],
        objects_per_job=settings["objects_per_job"],
        run=actors.run,
    )
    with DatasetWriter(store, PROPOSALS_PART, version, inputs=inputs, **writer_options(cfg)) as writer:
        for item in items:
            writer.put(item)
    return writer.ref


@flywheel_task(name="proposals", version="1", run_name=lambda p: f"assemble-proposals-{short(p['pool'])}")
def assemble_proposals(
    cfg: FlywheelConfig,
    pool: DatasetRef,
    parts: list[DatasetRef],
    models: dict[str, PinnedModel],
    members: list[dict],
    libraries: list[DatasetRef],
    settings: dict,
    dropped: list[dict],
    parent_run_id: str | None = None,
) -> DatasetRef:
    """Commit everything the ensemble proposed from its parts, with the dropped ensemble
    members in its quarantine table."""
    store = store_for(cfg)
    inputs = {"pool": pool, "models": models, "members": members, "libraries": libraries, "settings": settings}
    version = version_of(
        PROPOSALS,
        inputs={**inputs, "parts": [p.version for p in parts], "dropped": dropped},
        code_version=assemble_proposals.version,
    )
    parents = [pool, *libraries]
    params = {
        "num_candidates": settings["num_candidates"],
        "members": ", ".join(m["name"] for m in members),
        **{f"model.{k}": m.label for k, m in models.items()},
    }
    with stage(cfg, parent_run_id, "proposals", params=params) as run_id:
        ref = assemble_dataset(
            store, PROPOSALS, version, parts, inputs=inputs, parents=parents, quarantine=dropped, **writer_options(cfg)
        )
        dataset = Dataset(store, ref.name, ref.version)
        manifest = dataset.manifest()
        per_object = Counter(manifest.column("object_id").to_pylist())
        reasons = Counter(dataset.quarantine().column("reason").to_pylist())
        metrics = {
            "candidates": ref.num_rows,
            "objects": len(per_object),
            "quarantined": sum(reasons.values()),
            "candidates_per_object_min": min(per_object.values(), default=0),
            **{f"member_{k}": n for k, n in Counter(manifest.column("member").to_pylist()).items()},
            **{f"quarantined_{r.replace(' ', '_')}": n for r, n in reasons.items()},
        }
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        log_datasets(run_id, inputs=parents, outputs=[ref])
        log.info("%s: %s", ref, metrics)
    return ref


# -- previews and annotation tasks --------------------------------------------------------------


@flywheel_task(name="annotation-tasks", version="1", run_name=lambda p: f"annotation-tasks-{short(p['candidates'])}")
def publish_annotation_tasks(
    cfg: FlywheelConfig,
    candidates: DatasetRef,
    pool: DatasetRef,
    views: int,
    resolution: int,
    parent_run_id: str | None = None,
) -> TaskFiles:
    """Render every candidate from a few views (Blender Workbench), save one contact sheet
    per object, and publish the native task file and the Label Studio import files under
    ``annotation/<candidates version>/`` in the store (see :mod:`flywheel.feedback.publish`)."""
    with (
        stage(cfg, parent_run_id, "annotation-tasks", params={"views": views, "resolution": resolution}) as run_id,
        tempfile.TemporaryDirectory(prefix="flywheel-previews-") as tmp,
    ):
        published = publish_tasks(
            store_for(cfg),
            candidates,
            pool,
            views=views,
            resolution=resolution,
            render=render_pool(cfg).run,
            workdir=Path(tmp),
        )
        for path in published.files.values():
            mlflow.log_artifact(str(path), "annotation")
        for sheet in published.sheets[:4]:
            mlflow.log_artifact(str(sheet), "candidate_sheets")
        mlflow.log_metrics(
            {
                "objects": published.objects,
                "candidates": published.candidates,
                "preview_failures": published.preview_failures,
            }
        )
        log_datasets(run_id, inputs=[candidates, pool])
    return published.ref(candidates)
