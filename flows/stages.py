"""The flows' shared parts, in one place: each is a few tasks run in order with their
validation gates, and :func:`run_round` runs a body of them as one MLflow round.

    held-out sets' mesh libraries ─> gates
      ─> mesh library (none of their meshes) ─> gate ─┬─> iso3do parts (cached per batch) ─> assemble ─> gate
                                                      └─> occlusion parts (cached per batch) ─> assemble ─> gate
    image pool ─> gate ─> proposal parts (cached per part) ─> assemble ─> gate
               ─> [reward model] select ─> candidates ─> gate ─> previews + tasks
    exports ─> ingest (archive raw, check, count once) ─> gate ─> decide ─> SFT / preference / hard-case ─> gates

Every dataset passes its validation gate before anything consumes it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from prefect import tags as prefect_tags
from prefect.runtime import flow_run

from flywheel.core.config import FlywheelConfig, load_config, shaping
from flywheel.core.datasets import Dataset, list_versions
from flywheel.core.digests import digest_of, file_digest
from flywheel.core.records import DatasetRef, ModelRef, RewardRef, RunSummary
from flywheel.core.runtime import PROJECT_LOGGERS, apply_environment
from flywheel.core.store import open_store
from flywheel.feedback.artists import artist_summary, deliveries_digest, read_queue
from flywheel.feedback.ingest import file_lines
from flywheel.feedback.publish import TaskFiles
from flywheel.learning.ensemble import ensemble_members, resolve_ensemble
from flywheel.rounds import ledger
from flywheel.rounds.record import RoundRecord
from flywheel.tracking import lineage
from flywheel.tracking.experiment import artifact_link, configure, model_link, run_link
from rendering.mesh_library import source_contents
from tasks.artists import artists_base, deliveries_uri, import_art3do, queue_hard_cases, simulate_artists
from tasks.candidates import (
    assemble_proposals,
    build_image_pool,
    close_proposal_pool,
    propose_part,
    publish_annotation_tasks,
)
from tasks.conventions import Progress, ensure_result_storage, prefect_run_ids, store_for
from tasks.rankings import decide_round, export_digests, ingest_rankings
from tasks.reward import select_candidates, train_reward_model
from tasks.synth import (
    assemble,
    batches,
    build_mesh_library,
    close_render_pool,
    iso3do_settings,
    mesh_limits,
    occlusions_settings,
    render_iso3do_part,
    render_occlusions_part,
)
from tasks.validation import gate_for

SYNTHETIC_SECTIONS = ("meshes", "iso3do", "occlusions")
T = TypeVar("T")


def flow_config(config: FlywheelConfig | str | None) -> FlywheelConfig:
    """The config a flow runs with: the one its caller passed (the CLI passes the one it
    loaded), a config file (a deployment run with ``-p config=path.yaml``: that file over the
    defaults, then FLYWHEEL__* env), or — without one — the worker's, loaded once here."""
    cfg = config if isinstance(config, FlywheelConfig) else load_config(config)
    apply_environment(cfg)
    project_logs_to_run()
    return cfg


def project_logs_to_run() -> None:
    """Give the project's loggers the handler that ships records to the flow run's logs in
    Prefect. A worker's flow process set Prefect's logging up before any project code ran,
    so ``PREFECT_LOGGING_EXTRA_LOGGERS`` (set by ``apply_environment``) came too late there:
    without this, progress ("sft: step 3/8", "PASSED") reached only the worker's stdout."""
    to_api = logging.getLogger("prefect.extra").handlers
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers += [h for h in to_api if h not in logger.handlers]


def label_flow_run(name: str | None, tags: Iterable[str]) -> None:
    """Name the running flow run for what it runs (``round-3``, not ``massive-kiwi``) and add
    ``tags`` to it, so that the Prefect UI's runs list tells rounds and stages apart."""
    if not flow_run.id:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, name=name or current.name, tags=sorted({*current.tags, *tags}))


def run_locked(
    cfg: FlywheelConfig,
    name: str,
    body: Callable[[FlywheelConfig, str], list[DatasetRef]],
    shaping_sections: tuple[str, ...] = SYNTHETIC_SECTIONS,
    labels: dict[str, str] | None = None,
) -> RunSummary:
    """:func:`run_round` under the round lock (:func:`flywheel.rounds.ledger.round_lock`): a job
    started by hand (synth, propose, rankings) while a round or another job runs on the same
    store waits its turn instead of doing the same work twice."""
    with ledger.round_lock(cfg.state_dir / "rounds.lock", cfg.rounds.lock_wait_s, store_for(cfg)):
        return run_round(cfg, name, body, shaping_sections, labels)


def run_round(
    cfg: FlywheelConfig,
    name: str,
    body: Callable[[FlywheelConfig, str], list[DatasetRef]],
    shaping_sections: tuple[str, ...] = SYNTHETIC_SECTIONS,
    labels: dict[str, str] | None = None,
    name_run: bool = True,
) -> RunSummary:
    """Run ``body(cfg, parent_run_id) -> [DatasetRef]`` as one MLflow round with Blender workers;
    the round's identity is what of the config shapes it (:func:`flywheel.core.config.shaping`).
    The flow run is named ``name`` (unless ``name_run`` is false: a flow that runs several)
    and it and its task runs are tagged ``series:<id>`` and ``KEY:VALUE`` for each of ``labels``
    (``stage``, ``round``)."""
    ensure_result_storage(cfg)
    # The round is what it makes: re-running it after a fix or an override resumes its MLflow run.
    shaped = ledger.where_independent(cfg, shaping(cfg, shaping_sections))
    round_id = f"{name}-{digest_of(shaped)[:10]}"
    tags = [f"series:{ledger.series_id(cfg)}", *(f"{key}:{value}" for key, value in (labels or {}).items())]
    label_flow_run(name if name_run else None, tags)
    # The config that shapes the round is its identity: logged once, a resumed run has the same.
    parent = lineage.start_round(cfg, round_id, params=shaped, flow_run_id=prefect_run_ids()[0])
    try:
        with prefect_tags(*tags):
            refs = body(cfg, parent)
    except BaseException:
        lineage.end_round(parent, failed=True)
        raise
    finally:
        close_render_pool()
    lineage.end_round(parent)
    for ref in refs:
        print(f"{ref}: {ref.num_rows} rows  {ref.uri}")
    return RunSummary(run=round_id, mlflow_run_id=parent, datasets=refs)


def round_artifacts(cfg: FlywheelConfig, record: RoundRecord, record_uri: str) -> None:
    """The committed round on its flow run's Artifacts tab, where ops people look: a summary
    page (decision, metrics with intervals, accept rate, volumes, warnings, links to the
    MLflow run, the model versions and the round record) and tables of the evaluation and of
    what the round's datasets quarantined, by reason. Keyed by series, so each key's history
    is the series' rounds."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    links = {"round record": record_uri}
    if record.mlflow_run_id:
        links["MLflow round run"] = run_link(cfg, configure(cfg), record.mlflow_run_id)
    for role, model in (("challenger", record.challenger), ("champion now", record.champion_after)):
        links[f"model {role}"] = model_link(cfg, model.name, model.version)
    pictures = []
    for run, path in lineage.run_pictures(record.mlflow_run_id) if record.mlflow_run_id else ():
        made = [f"{k.rsplit('.', 1)[1]}@{v[:8]}" for k, v in run.data.tags.items() if k.startswith("dataset.output.")]
        label = f"{run.info.run_name}{f' ({made[0]})' if len(made) == 1 else ''}: {path}"
        pictures.append((label, artifact_link(cfg, run.info.run_id, run.info.artifact_uri, path)))
    key = f"series-{record.series}".lower()
    what = f"round {record.round} of series {record.series}"
    create_markdown_artifact(ledger.round_markdown(record, links, pictures), key=f"{key}-round", description=what)
    create_table_artifact(ledger.evaluation_rows(record), key=f"{key}-evaluation", description=f"{what}: held-out")
    store = store_for(cfg)
    quarantined = [
        {"dataset": str(ref), "reason": reason, "items": count}
        for ref in record.datasets.values()
        for reason, count in sorted(
            Counter(Dataset(store, ref.name, ref.version).quarantine().column("reason").to_pylist()).items()
        )
    ]
    create_table_artifact(
        quarantined or [{"dataset": "(all)", "reason": "nothing quarantined", "items": 0}],
        key=f"{key}-quarantine",
        description=f"{what}: items its datasets refused, by reason",
    )


def latest_version(cfg: FlywheelConfig, spec: str) -> str:
    """The version a NAME[@VERSION] refers to now (the newest committed one if unpinned)."""
    name, _, version = spec.partition("@")
    if version:
        return version
    versions = list_versions(store_for(cfg), name)
    if not versions:
        raise ValueError(f"dataset {name}: no committed version in {cfg.store_root}; run `flywheel synth all` first")
    return str(versions[-1]["version"])


def latest_ref(cfg: FlywheelConfig, name: str) -> DatasetRef | None:
    versions = list_versions(store_for(cfg), name)
    return Dataset(store_for(cfg), name, versions[-1]["version"]).ref if versions else None


# -- synthetic data ---------------------------------------------------------------------------


def with_fields(cfg: FlywheelConfig, section: str, **fields: Any) -> FlywheelConfig:
    """``cfg`` with ``fields`` of its ``section`` replaced (validated as the section is)."""
    current = getattr(cfg, section)
    return cfg.model_copy(update={section: type(current).model_validate({**current.model_dump(), **fields})})


def world_config(cfg: FlywheelConfig, seed: int, meshes: int, count: int, real: bool = True) -> FlywheelConfig:
    """``cfg`` for ``count`` composites of a mesh library of their own (``seed``, ``meshes``
    meshes), in the "real" world (``rounds.world``) or, with ``real=False``, generated as the
    synthetic training data is."""
    world = cfg.rounds.world
    mesh_fields = {"source": None, **(world.meshes if real else {})}
    own = with_fields(cfg, "meshes", **{**mesh_fields, "seed": seed, "num_procedural": meshes})
    return with_fields(own, "occlusions", **{**(world.occlusions if real else {}), "seed": seed, "num_samples": count})


def heldout_worlds(cfg: FlywheelConfig) -> list[FlywheelConfig]:
    """The configs of the series' held-out sets (:func:`world_config`): the "real" world's,
    which the promotion gate and the reports score, then — with ``rounds.synthetic_eval_objects``
    — the synthetic world's, which measures the bootstrap's gap between the two."""
    rules = cfg.rounds
    worlds = [world_config(cfg, rules.eval_seed, rules.eval_meshes, rules.eval_objects)]
    if rules.synthetic_eval_objects:
        n = rules.synthetic_eval_objects
        worlds.append(world_config(cfg, rules.eval_seed, n, n, real=False))
    return worlds


def heldout_libraries(cfg: FlywheelConfig, parent: str) -> tuple[DatasetRef, ...]:
    """The mesh libraries of :func:`heldout_worlds`, gated: what no library to train on may hold."""
    return tuple(mesh_library(world, parent) for world in heldout_worlds(cfg))


def composites(cfg: FlywheelConfig, parent: str, held_out: tuple[DatasetRef, ...] = ()) -> DatasetRef:
    """The composites of ``cfg`` (:func:`world_config`) of a mesh library of their own,
    without the meshes of the ``held_out`` libraries."""
    return occlusions(cfg, mesh_library(cfg, parent, held_out), parent)


def mesh_library(cfg: FlywheelConfig, parent: str, held_out: tuple[DatasetRef, ...] = ()) -> DatasetRef:
    """The mesh library of config ``meshes``, gated; a mesh with the surface of one in the
    ``held_out`` libraries is quarantined."""
    m = cfg.meshes
    limits = mesh_limits(m)
    # A user source is pinned by what it holds now: an added or changed file is a new library.
    contents = source_contents(m.source, cfg.store) if m.source is not None else None
    library = build_mesh_library(
        cfg,
        m.source,
        contents,
        m.num_procedural,
        m.seed,
        m.occupancy_resolution,
        limits,
        m.family_balance,
        m.up_axis,
        tuple(m.families),
        held_out,
        parent_run_id=parent,
    )
    gate_for(cfg, library, parent)
    return library


def training_library(cfg: FlywheelConfig, parent: str) -> DatasetRef:
    """The mesh library to train on (config ``meshes``), without the held-out sets' meshes."""
    return mesh_library(cfg, parent, heldout_libraries(cfg, parent))


def in_parts(what: str, batches: list[T], make: Callable[[T], DatasetRef]) -> list[DatasetRef]:
    """``make`` each batch's part in turn, with a progress artifact on the flow run (the
    Prefect UI shows how many of ``what``'s parts are done)."""
    progress = Progress(f"{what}, parts")
    parts = []
    for batch in batches:
        parts.append(make(batch))
        progress.update(len(parts), len(batches))
    return parts


def iso3do(cfg: FlywheelConfig, library: DatasetRef, parent: str) -> DatasetRef:
    settings = iso3do_settings(cfg)
    ids = sorted(Dataset(store_for(cfg), library.name, library.version).manifest().column("mesh_id").to_pylist())
    parts = in_parts(
        "Iso-3DO renders",
        batches(ids, cfg.iso3do.objects_per_shard),
        lambda batch: render_iso3do_part(cfg, library, batch, settings),
    )
    renders = assemble(cfg, "iso3do", library, parts, settings, parent_run_id=parent)
    gate_for(cfg, renders, parent)
    return renders


def occlusions(cfg: FlywheelConfig, library: DatasetRef, parent: str) -> DatasetRef:
    settings = occlusions_settings(cfg)
    indices = list(range(cfg.occlusions.num_samples))
    parts = in_parts(
        "Flying Occlusions composites",
        batches(indices, cfg.occlusions.samples_per_shard),
        lambda batch: render_occlusions_part(cfg, library, batch, settings),
    )
    composites = assemble(cfg, "occlusions", library, parts, settings, parent_run_id=parent)
    gate_for(cfg, composites, parent)
    return composites


def all_synthetic(cfg: FlywheelConfig, parent: str, held_out: tuple[DatasetRef, ...] | None = None) -> list[DatasetRef]:
    """Mesh library to train on, then Iso-3DO and Flying Occlusions from it. ``held_out``:
    the held-out sets' libraries when the caller has them (default: built here)."""
    library = training_library(cfg, parent) if held_out is None else mesh_library(cfg, parent, held_out)
    return [library, iso3do(cfg, library, parent), occlusions(cfg, library, parent)]


# -- propose ----------------------------------------------------------------------------------


def image_pool(cfg: FlywheelConfig, parent: str, source: str | None = None, mask_error: float = 0.0) -> DatasetRef:
    """The pool from ``source`` (default: config ``candidates.pool``), gated."""
    source = source or cfg.candidates.pool
    is_manifest = Path(source).suffix in (".jsonl", ".csv")
    pinned = file_digest(source) if is_manifest else latest_version(cfg, source)
    pool = build_image_pool(cfg, source, pinned, cfg.candidates.max_image_bytes, mask_error, parent_run_id=parent)
    gate_for(cfg, pool, parent)
    return pool


def reward_model(cfg: FlywheelConfig, parent: str, champion: ModelRef, history: list[RoundRecord]) -> RewardRef | None:
    """The reward model of the round after ``history``: over ``champion``'s features, trained
    on every preference pair so far and on the artists' meshes delivered (None before any)."""
    preferences = [r.datasets["preferences"] for r in history if r.datasets["preferences"].num_rows]
    if not preferences or cfg.reward.oversample == 1:  # nothing to learn from, or guided search is off
        return None
    art3do = history[-1].datasets.get("art3do")
    settings = cfg.reward.model_dump(include={"heldout_share", "l2", "min_pairs"})
    return train_reward_model(
        cfg,
        champion,
        preferences,
        art3do if art3do and art3do.num_rows else None,
        [r.datasets["candidates"] for r in history],
        settings,
        parent_run_id=parent,
    )


def candidates(
    cfg: FlywheelConfig,
    pool: DatasetRef,
    parent: str,
    libraries: list[DatasetRef] | None = None,
    reward: RewardRef | None = None,
) -> DatasetRef:
    """Candidates for the pool from the configured ensemble, gated. Retrieval members search
    ``libraries`` (default: config ``candidates.retrieval_library``; a round adds the accepted
    winners and artist meshes of the rounds before it). With a ``reward`` model the ensemble
    proposes ``reward.oversample`` x N per object and the reward model picks the N shown."""
    c = cfg.candidates
    factor = cfg.reward.oversample if reward else 1
    models, members, dropped = resolve_ensemble(cfg, ensemble_members(cfg, factor))
    if not any(m["kind"] == "retrieval" for m in members):
        libraries = []
    elif libraries is None:
        name = c.retrieval_library.partition("@")[0]
        libraries = [Dataset(store_for(cfg), name, latest_version(cfg, c.retrieval_library)).ref]
    settings = {"num_candidates": c.num_candidates * factor, "objects_per_job": c.objects_per_job}
    ids = Dataset(store_for(cfg), pool.name, pool.version).manifest().column("object_id").to_pylist()
    try:
        parts = [
            propose_part(cfg, pool, part, models, members, libraries, settings)
            for part in batches(ids, c.objects_per_part)
        ]
    finally:
        close_proposal_pool()
    proposals = assemble_proposals(
        cfg, pool, parts, models, members, libraries, settings, dropped, parent_run_id=parent
    )
    gate_for(cfg, proposals, parent)
    shown = select_candidates(
        cfg, proposals, pool, reward, c.num_candidates, cfg.reward.explore if reward else 0, parent_run_id=parent
    )
    gate_for(cfg, shown, parent)
    return shown


def publish(cfg: FlywheelConfig, proposals: DatasetRef, pool: DatasetRef, parent: str) -> TaskFiles:
    published = publish_annotation_tasks(
        cfg, proposals, pool, cfg.candidates.preview_views, cfg.candidates.preview_resolution, parent_run_id=parent
    )
    print(f"annotation tasks: {published.uris['tasks']}")
    print("Label Studio imports: " + ", ".join(u for k, u in published.uris.items() if k.startswith("label_studio")))
    print("  (or `flywheel annotate publish` to a Label Studio server)")
    return published


# -- rankings ---------------------------------------------------------------------------------


def candidates_ref(cfg: FlywheelConfig, version: str | None) -> DatasetRef:
    """A candidates version (default: the newest)."""
    ref = Dataset(store_for(cfg), "candidates", version).ref if version else latest_ref(cfg, "candidates")
    if ref is None:
        raise ValueError(f"no candidates in {cfg.store_root}: run `flywheel propose` first")
    return ref


def ingest_and_decide(
    cfg: FlywheelConfig,
    parent: str,
    files: list[str],
    candidates: DatasetRef,
    round_index: int,
    previous: DatasetRef | None,
    label_configs: dict[str, str] | None = None,
) -> tuple[list[DatasetRef], dict[str, float]]:
    """Add ``files`` to the ``previous`` rankings version and decide round ``round_index``;
    prints one line per export (rows read, accepted, quarantined by reason).
    -> ([rankings, sft, preferences, hard-cases], the decision metrics)"""
    r = cfg.rankings
    settings = {
        "annotators": sorted(r.annotators) if r.annotators is not None else None,
        "max_file_bytes": int(r.max_file_mb * 2**20),
        "max_time_spent_s": r.max_time_spent_s,
    }
    digests = export_digests(cfg, files)
    judged = ingest_rankings(cfg, files, digests, candidates, previous, settings, label_configs, parent_run_id=parent)
    for line in file_lines(Dataset(store_for(cfg), judged.name, judged.version).marker, files, judged != previous):
        print(line)
    gate_for(cfg, judged, parent)
    pool = next(
        p
        for p in Dataset(store_for(cfg), candidates.name, candidates.version).marker["parents"]
        if p["name"] == "image-pool"
    )
    pool_ref = Dataset(store_for(cfg), pool["name"], pool["version"]).ref
    decided = decide_round(cfg, judged, candidates, pool_ref, round_index, r.rules(), parent_run_id=parent)
    for ref in decided.datasets:
        gate_for(cfg, ref, parent)
    return [judged, *decided.datasets], decided.metrics


def artist_path(
    cfg: FlywheelConfig, parent: str, series: str, round_index: int, hard: DatasetRef
) -> tuple[DatasetRef, dict[str, float]]:
    """Hard cases -> the artist queue (within the round's budget) -> deliveries (simulated
    artists deliver what is due; people drop files in the deliveries folder) -> Art-3DO, gated.
    -> (the Art-3DO version as of this round, the artist path's counts and spend)"""
    a, store = cfg.artists, store_for(cfg)
    base = artists_base(series)
    queue_hard_cases(cfg, hard, base, round_index, a.budget, a.cost_per_mesh, a.latency_rounds, parent_run_id=parent)
    where = deliveries_uri(cfg, series)
    if a.simulate:
        simulate_artists(
            cfg, base, round_index, where, deliveries_digest(open_store(where, cfg.store)), parent_run_id=parent
        )
    art3do = import_art3do(
        cfg,
        base,
        round_index,
        where,
        deliveries_digest(open_store(where, cfg.store)),
        cfg.meshes.occupancy_resolution,
        mesh_limits(cfg.meshes),
        parent_run_id=parent,
    )
    gate_for(cfg, art3do, parent)
    return art3do, artist_summary(
        read_queue(store, base, round_index), round_index, Dataset(store, art3do.name, art3do.version)
    )
