"""Publishing a candidates version for annotators: previews of every candidate, one
contact sheet per object, and the task files (native JSONL and Label Studio imports) under
``annotation/<candidates version>/`` in the store."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from flywheel.core.codecs import decode_npy, encode_png
from flywheel.core.datasets import Dataset
from flywheel.core.records import DatasetRef
from flywheel.core.store import Store
from flywheel.feedback import annotation
from flywheel.tracking.plots import image_sheet
from rendering.meshes import CleanMesh
from rendering.pool import Job, JobResult
from rendering.previews import preview_scene
from sam3d_model.metrics import occupancy_to_mesh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskFiles:
    """Where a candidates version's annotation tasks are: store URIs of the native task file
    (``tasks``) and the Label Studio imports (``label_studio_<template>``)."""

    candidates: DatasetRef
    uris: dict[str, str]
    objects: int
    num_candidates: int


@dataclass(frozen=True)
class PublishedTasks:
    """What was published: store URIs of the task files (by kind), their local copies, the
    contact sheets (local files), and counts."""

    uris: dict[str, str]
    files: dict[str, Path]
    sheets: list[Path]
    objects: int
    candidates: int
    preview_failures: int

    def ref(self, candidates: DatasetRef) -> TaskFiles:
        return TaskFiles(candidates=candidates, uris=self.uris, objects=self.objects, num_candidates=self.candidates)


def _mesh_npz(occupancy: npt.NDArray[Any]) -> bytes | None:
    """The candidate's marching-cubes surface in the mesh library's file format (grey)."""
    mesh = occupancy_to_mesh(occupancy)
    if len(mesh.faces) == 0:
        return None
    return CleanMesh(
        mesh.vertices.astype(np.float32),
        mesh.faces.astype(np.int32),
        np.full((len(mesh.vertices), 4), 200, np.uint8),
        watertight=mesh.is_watertight,
    ).to_npz()


def _crop_view(rgb: npt.NDArray[Any], mask: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """The annotator's reference: the object's crop with everything else dimmed."""
    ys, xs = np.nonzero(mask)
    pad = max(4, int(0.15 * max(ys.ptp() + 1, xs.ptp() + 1)))
    y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    shown = np.where(mask[..., None], rgb, (rgb * 0.35).astype(np.uint8))[y0:y1, x0:x1]
    return np.asarray(Image.fromarray(shown).resize((size, size), Image.Resampling.BILINEAR))


def publish_tasks(
    store: Store,
    candidates: DatasetRef,
    pool: DatasetRef,
    *,
    views: int,
    resolution: int,
    render: Callable[[list[Job]], list[JobResult]],
    workdir: Path,
) -> PublishedTasks:
    """Render ``views`` previews of every candidate with ``render`` (Blender workers), and
    publish them, the contact sheets and the task files; local copies go to ``workdir``."""
    prefix = f"annotation/{candidates.version}"
    cands_ds = Dataset(store, candidates.name, candidates.version)
    rows = cands_ds.manifest().to_pylist()
    by_object: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_object.setdefault(row["object_id"], []).append(row)
    occ = {s["__key__"]: decode_npy(s["occ.npy"]) for s in cands_ds.samples()}
    jobs, blank = [], np.zeros((resolution, resolution * views, 4), np.uint8)
    for oid, cands in by_object.items():
        scenes = []
        for c in cands:
            data = _mesh_npz(occ[c["candidate_id"]])
            if data is not None:
                path = workdir / f"{c['candidate_id']}.npz"
                path.write_bytes(data)
                scenes.append(preview_scene(str(path), views, resolution).to_dict())
        jobs.append(Job(oid, "rendering.previews:render_previews", {"scenes": scenes, "out_dir": f"{workdir}/{oid}"}))
    results = {r.id: r for r in render(jobs)}
    pool_samples = {s["__key__"]: s for s in Dataset(store, pool.name, pool.version).samples(keys=list(by_object))}
    tasks, sheets = [], []
    for oid, cands in by_object.items():
        result = results[oid]
        files = iter(result.result if result.ok else [])
        sample = pool_samples[oid]
        rgb = np.asarray(Image.open(io.BytesIO(sample["rgb.png"])).convert("RGB"))
        mask = np.asarray(Image.open(io.BytesIO(sample["mask.png"]))) > 127
        strips, entries = [], []
        for c in cands:
            strip = blank
            if c["occupied_fraction"] > 0 and result.ok:
                strip = np.concatenate([np.asarray(Image.open(f).convert("RGBA")) for f in next(files)], axis=1)
            key = f"{prefix}/previews/{c['candidate_id']}.png"
            store.put_bytes(key, encode_png(strip))
            strips.append(strip)
            entries.append({"candidate_id": c["candidate_id"], "preview": store.uri(key), "member": c["member"]})
        if not result.ok:
            log.warning("previews of %s failed: %s (blank previews published)", oid, result.reason)
        sheet = image_sheet(
            [_crop_view(rgb, mask, resolution), *strips],
            [f"input {oid}"]
            + [
                f"{c['candidate_id']} ({c['member']} seed {c['seed']})"
                if c["kind"] == "model"
                else f"{c['candidate_id']} ({c['member']} {c['retrieved_mesh_id'][:12]})"
                for c in cands
            ],
            workdir / "sheets" / f"{oid}.png",
            columns=2,
            panel=(2.0 * views, 2.0),  # each view 2 inches: ~220 px, as large as the input photo
        )
        sheets.append(sheet)
        store.put_file(f"{prefix}/sheets/{oid}.png", sheet)
        tasks.append(
            {
                "task_id": f"{candidates.version}/{oid}",
                "object_id": oid,
                "candidates_dataset": str(candidates),
                "image": store.uri(f"{prefix}/inputs/{oid}.png"),
                "mask": store.uri(f"{prefix}/inputs/{oid}-mask.png"),
                "sheet": store.uri(f"{prefix}/sheets/{oid}.png"),
                "candidates": entries,
                "kinds": ["pairwise", "best-of-n", "reject-all"],
            }
        )
        store.put_bytes(f"{prefix}/inputs/{oid}.png", sample["rgb.png"])
        store.put_bytes(f"{prefix}/inputs/{oid}-mask.png", sample["mask.png"])
    outputs = {
        "tasks": ("tasks.jsonl", annotation.native_tasks(tasks)),
        **{
            f"label_studio_{kind}": (
                f"label_studio_{kind}.json",
                json.dumps(annotation.label_studio_tasks(kind, tasks), indent=1),
            )
            for kind in annotation.LABEL_STUDIO_CONFIGS
        },
    }
    uris, local = {}, {}
    for name, (filename, text) in outputs.items():
        store.put_bytes(f"{prefix}/{filename}", text.encode())
        local[name] = workdir / filename
        local[name].write_text(text)
        uris[name] = store.uri(f"{prefix}/{filename}")
    return PublishedTasks(
        uris=uris,
        files=local,
        sheets=sheets,
        objects=len(tasks),
        candidates=len(rows),
        preview_failures=sum(not r.ok for r in results.values()),
    )
