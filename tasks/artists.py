"""Tasks of the artist path: queue a round's hard cases, let simulated artists deliver, and
import every delivery as Art-3DO (see :mod:`flywheel.feedback.artists` for the layout)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from flywheel.core.config import FlywheelConfig
from flywheel.core.contracts import ART3DO
from flywheel.core.datasets import Dataset, DatasetWriter, committed_ref, version_of
from flywheel.core.digests import digest_of
from flywheel.core.records import DatasetRef, Rejected, Sample
from flywheel.core.store import LocalStore, Store, open_store
from flywheel.feedback.artists import (
    ArtistTask,
    DeliveryError,
    deliveries_by_object,
    pick_hard_cases,
    pose_json,
    queue_key,
    read_pose,
    read_queue,
    true_meshes,
    write_queue,
)
from rendering.mesh_library import file_sample
from rendering.meshes import MESH_FORMATS, CleanMesh, MeshFilter
from tasks.conventions import flywheel_task, log_datasets, stage, store_for, writer_options
from tasks.synth import mesh_limits

log = logging.getLogger(__name__)


def artists_base(series: str) -> str:
    """Where a series' artist queue lives in the store."""
    return f"artists/{series}"


def deliveries_uri(cfg: FlywheelConfig, series: str) -> str:
    """The folder artists deliver to: ``artists.deliveries``, else the series' folder in the store."""
    return cfg.artists.deliveries or store_for(cfg).uri(f"{artists_base(series)}/deliveries")


@flywheel_task(name="artist-queue", version="1", run_name=lambda p: f"artist-queue-round-{p['round_index']}")
def queue_hard_cases(
    cfg: FlywheelConfig,
    hard: DatasetRef,
    base: str,
    round_index: int,
    budget: int,
    cost: float,
    latency_rounds: int,
    parent_run_id: str | None = None,
) -> str:
    """Queue the round's ``budget`` most rejected hard cases for the artists (photo, mask and a
    task line each); returns the queue's task-file key."""
    store = store_for(cfg)
    ds = Dataset(store, hard.name, hard.version)
    pool = next(f"{p['name']}@{p['version']}" for p in ds.marker["parents"] if p["name"] == "image-pool")
    picked = pick_hard_cases(ds.manifest(), budget)
    tasks = [
        ArtistTask(
            object_id=r["object_id"],
            round=round_index,
            due_round=round_index + latency_rounds,
            reject_share=r["reject_share"],
            cost=cost,
            pool=pool,
        )
        for r in picked
    ]
    with stage(cfg, parent_run_id, "artist-queue", params={"budget": budget, "cost_per_mesh": cost}):
        images = {s["__key__"]: s for s in ds.samples(keys=[t.object_id for t in tasks])}
        key = write_queue(store, base, round_index, tasks, images)
        mlflow.log_metrics({"hard_cases": hard.num_rows, "queued": len(tasks)})
    log.info("artists: queued %d of %d hard cases (budget %d): %s", len(tasks), hard.num_rows, budget, store.uri(key))
    return key


@flywheel_task(name="simulated-artists", version="1", run_name=lambda p: f"simulated-artists-round-{p['round_index']}")
def simulate_artists(
    cfg: FlywheelConfig,
    base: str,
    round_index: int,
    deliveries_uri: str,
    delivered_before: str,
    parent_run_id: str | None = None,
) -> int:
    """Simulated artists deliver every queued case due by round ``round_index`` whose truth is
    known and that nobody delivered yet: the true mesh as PLY and its pose, written into the
    deliveries folder like people's. ``delivered_before``: the folder's digest (a deleted
    delivery is delivered again). Returns how many they delivered."""
    store = store_for(cfg)
    deliveries = open_store(deliveries_uri, cfg.store)
    present = deliveries_by_object([i.key for i in deliveries.list("")], set(MESH_FORMATS))
    due = [t for t in read_queue(store, base, round_index) if t.due_round <= round_index and t.object_id not in present]
    made = 0
    with stage(cfg, parent_run_id, "simulated-artists", params={"due": len(due)}):
        for pool in sorted({t.pool for t in due}):
            ids = [t.object_id for t in due if t.pool == pool]
            for object_id, (mesh, pose) in sorted(true_meshes(store, pool, ids).items()):
                deliveries.put_bytes(f"{object_id}.pose.json", pose_json(pose))  # the pose first: a mesh
                deliveries.put_bytes(f"{object_id}.ply", CleanMesh.from_npz(mesh).to_ply())  # then is complete
                made += 1
        mlflow.log_metrics({"delivered": made})
    return made


@contextmanager
def _local_folder(deliveries: Store) -> Iterator[Path]:
    """The deliveries as a local folder (an S3 prefix is fetched whole: meshes and sidecars)."""
    if isinstance(deliveries, LocalStore):
        yield deliveries.root
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-deliveries-") as tmp:
        for info in deliveries.list(""):
            target = Path(tmp) / info.key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(deliveries.get_bytes(info.key))
        yield Path(tmp)


@flywheel_task(name="art3do", version="1", run_name=lambda p: f"art3do-round-{p['round_index']}")
def import_art3do(
    cfg: FlywheelConfig,
    base: str,
    round_index: int,
    deliveries_uri: str,
    deliveries_digest: str,
    resolution: int,
    limits: dict,
    parent_run_id: str | None = None,
) -> DatasetRef:
    """Art-3DO as of round ``round_index``: every delivery for a case queued so far, through the
    same mesh ingestion as any mesh (safe loading, filters, normalisation, occupancy) and a
    checked pose, with the photo and mask of its queue entry. A delivery that cannot be used
    — not in the queue, a mesh or a pose missing or unreadable — is a quarantine row."""
    store = store_for(cfg)
    queued = {t.object_id: t for t in read_queue(store, base, round_index)}
    deliveries = open_store(deliveries_uri, cfg.store)
    found = deliveries_by_object([i.key for i in deliveries.list("")], set(MESH_FORMATS))
    inputs = {
        "queue": digest_of(sorted(t.model_dump_json() for t in queued.values())),
        "deliveries": deliveries_digest,
        "resolution": resolution,
        "limits": limits,
    }
    version = version_of(ART3DO, inputs=inputs, code_version=import_art3do.version)
    with stage(cfg, parent_run_id, "art3do", params={"queued": len(queued), "deliveries": len(found)}) as run_id:
        ref = committed_ref(store, ART3DO.name, version)
        if ref is None:
            with (
                _local_folder(deliveries) as folder,
                DatasetWriter(store, ART3DO, version, inputs=inputs, **writer_options(cfg)) as writer,
            ):
                for object_id, files in found.items():
                    writer.put(
                        delivery_sample(
                            store,
                            base,
                            queued.get(object_id),
                            object_id,
                            files,
                            folder,
                            deliveries,
                            resolution,
                            MeshFilter(**limits),
                        ),
                        "delivery",
                    )
            ref = writer.ref
        dataset = Dataset(store, ref.name, ref.version)
        refused = dataset.quarantine().to_pylist()
        for q in refused:
            log.warning("artist delivery refused: %s: %s (%s)", q["item_id"], q["reason"], q["detail"])
        mlflow.log_metrics({"art3do_rows": ref.num_rows, "refused_deliveries": len(refused)})
        log_datasets(run_id, outputs=[ref])
    return ref


def delivery_sample(
    store: Store,
    base: str,
    task: ArtistTask | None,
    object_id: str,
    files: dict[str, str],
    folder: Path,
    deliveries: Store,
    resolution: int,
    limits: MeshFilter,
) -> Sample | Rejected:
    """One object's delivery as an Art-3DO sample, or why it cannot be used (its item: the
    file at fault)."""
    name = files.get("mesh") or files["pose"]
    source = deliveries.uri(name)
    if task is None:
        return Rejected(source, "not in the artist queue", f"{name}: no queued case has id {object_id!r}", "delivery")
    if "mesh" not in files or "pose" not in files:
        missing = "mesh" if "mesh" not in files else "pose"
        return Rejected(source, f"no {missing}", f"{object_id}: the {missing} file was not delivered", "delivery")
    try:
        pose = read_pose(deliveries.get_bytes(files["pose"]), files["pose"])
    except DeliveryError as e:
        return Rejected(deliveries.uri(files["pose"]), e.reason, e.detail, "delivery")
    sample = file_sample(folder / files["mesh"], source, resolution, limits, folder)
    if isinstance(sample, Rejected):
        return Rejected(sample.item_id, sample.reason, sample.detail, "delivery")
    photo = store.get_bytes(queue_key(base, task.round, f"{object_id}/photo.png"))
    mask = store.get_bytes(queue_key(base, task.round, f"{object_id}/mask.png"))
    row = {
        "object_id": object_id,
        "round": task.round,
        "source": source,
        "mesh_id": sample.row["mesh_id"],
        "R": pose.R.reshape(-1).tolist(),
        "t": pose.t.tolist(),
        "s": pose.s,
        "cost": task.cost,
    }
    files_out = {
        "rgb.png": photo,
        "mask.png": mask,
        "occ.npy": sample.files["occ.npy"],
        "mesh.npz": sample.files["mesh.npz"],
    }
    return Sample(object_id, row, files_out, sample.warnings)


def check_deliveries(cfg: FlywheelConfig, base: str, upto_round: int, deliveries_uri: str) -> list[Sample | Rejected]:
    """What importing the deliveries now would make of each (no commit): the same checks as
    :func:`import_art3do`."""
    store = store_for(cfg)
    queued = {t.object_id: t for t in read_queue(store, base, upto_round)}
    deliveries = open_store(deliveries_uri, cfg.store)
    found = deliveries_by_object([i.key for i in deliveries.list("")], set(MESH_FORMATS))
    m = cfg.meshes
    limits = MeshFilter(**mesh_limits(m))
    with _local_folder(deliveries) as folder:
        return [
            delivery_sample(
                store, base, queued.get(oid), oid, files, folder, deliveries, m.occupancy_resolution, limits
            )
            for oid, files in found.items()
        ]
