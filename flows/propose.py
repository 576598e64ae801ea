"""The propose half of a round: the image pool -> candidates from the ensemble (on Ray,
cached per part) -> previews and annotation tasks.

    image pool ─> gate ─> candidate parts (cached per part) ─> assemble ─> gate ─> previews + tasks
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flywheel.config import FlywheelConfig
from flywheel.datasets import Dataset, DatasetRef, list_versions
from flywheel.models import file_digest
from flows.synth import run_round
from tasks.candidates import (assemble_candidates, build_image_pool, close_proposal_pool, ensemble_members,
                              propose_part, publish_annotation_tasks, resolve_ensemble)
from tasks.conventions import store_for
from tasks.synth import batches
from tasks.validation import gate_for


def _latest(cfg: FlywheelConfig, spec: str) -> str:
    """The version a NAME[@VERSION] refers to now (the newest committed one if unpinned)."""
    name, _, version = spec.partition("@")
    if version:
        return version
    versions = list_versions(store_for(cfg), name)
    if not versions:
        raise ValueError(f"dataset {name}: no committed version in {cfg.store_root}; run `flywheel synth all` first")
    return versions[-1]["version"]


def image_pool(cfg: FlywheelConfig, parent: str, source: str | None = None) -> DatasetRef:
    """The pool from ``source`` (default: config ``candidates.pool``), gated."""
    source = source or cfg.candidates.pool
    is_manifest = Path(source).suffix in (".jsonl", ".csv")
    pinned = file_digest(source) if is_manifest else _latest(cfg, source)
    pool = build_image_pool(cfg, source, pinned, cfg.candidates.max_image_bytes, parent_run_id=parent)
    gate_for(cfg, pool, parent)
    return pool


def candidates(cfg: FlywheelConfig, pool: DatasetRef, parent: str, library: DatasetRef | None = None) -> DatasetRef:
    """Candidates for the pool from the configured ensemble, gated. Retrieval members search
    ``library`` (default: config ``candidates.retrieval_library``)."""
    c = cfg.candidates
    models, members, dropped = resolve_ensemble(cfg, ensemble_members(cfg))
    if not any(m["kind"] == "retrieval" for m in members):
        library = None
    elif library is None:
        name = c.retrieval_library.partition("@")[0]
        library = Dataset(store_for(cfg), name, _latest(cfg, c.retrieval_library)).ref
    settings = {"num_candidates": c.num_candidates, "objects_per_job": c.objects_per_job}
    ids = Dataset(store_for(cfg), pool.name, pool.version).manifest().column("object_id").to_pylist()
    try:
        parts = [propose_part(cfg, pool, part, models, members, library, settings)
                 for part in batches(ids, c.objects_per_part)]
    finally:
        close_proposal_pool()
    proposals = assemble_candidates(cfg, pool, parts, models, members, library, settings, dropped,
                                    parent_run_id=parent)
    gate_for(cfg, proposals, parent)
    return proposals


def publish(cfg: FlywheelConfig, proposals: DatasetRef, pool: DatasetRef, parent: str) -> dict:
    published = publish_annotation_tasks(cfg, proposals, pool, cfg.candidates.preview_views,
                                         cfg.candidates.preview_resolution, parent_run_id=parent)
    print(f"annotation tasks: {published['tasks']}")
    print(f"Label Studio imports: {published['label_studio_pairwise']}, {published['label_studio_ranking']}")
    return published


def propose_body(cfg: FlywheelConfig, parent: str) -> list[DatasetRef]:
    pool = image_pool(cfg, parent)
    proposals = candidates(cfg, pool, parent)
    publish(cfg, proposals, pool, parent)
    return [pool, proposals]


@flow(name="propose", log_prints=True)
def propose() -> dict:
    """Image pool -> candidates (config ``candidates``) -> previews and annotation tasks."""
    return run_round("propose", propose_body, ("candidates",))
