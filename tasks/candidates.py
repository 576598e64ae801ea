"""Tasks of the propose stage: image pool, candidates (cached per part, on Ray), previews
and annotation task files.

Each part task commits its own ``candidates-part`` version, so a re-run after a crash
proposes only the missing parts; the assemble task copies the parts' shards.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image

from flywheel.core.codecs import decode_npy, encode_npy, encode_png
from flywheel.core.config import FlywheelConfig
from flywheel.core.contracts import CANDIDATES, CANDIDATES_PART, IMAGE_POOL
from flywheel.core.datasets import Dataset, DatasetWriter, assemble_dataset, committed_ref, version_of
from flywheel.core.records import DatasetRef, Rejected
from flywheel.feedback import annotation
from flywheel.feedback.image_pool import from_dataset, from_manifest, unique
from flywheel.learning.serving import ProposalJob, ProposalPool
from flywheel.tracking.plots import image_sheet
from flywheel.tracking.registry import ModelNotFound, RegistryUnreachable, resolve_model
from rendering.meshes import CleanMesh
from rendering.pool import Job
from rendering.previews import preview_scene
from sam3d_model.checkpoint import read_checkpoint
from sam3d_model.config import ModelConfig
from sam3d_model.data import collate, condition_inputs
from sam3d_model.ensemble import DEFAULT_MEMBERS, Member
from sam3d_model.metrics import occupancy_to_mesh
from tasks.conventions import ProcessResource, flywheel_task, log_datasets, stage, store_for, writer_options
from tasks.synth import batches, render_pool

log = logging.getLogger(__name__)
_PROPOSAL_POOL = ProcessResource()


def ensemble_members(cfg: FlywheelConfig) -> list[dict]:
    """The configured members as plain dicts (validated), or the default ensemble."""
    members = [Member(**m) for m in cfg.candidates.members] or list(DEFAULT_MEMBERS)
    return [m.model_dump(mode="json") for m in members]


def resolve_ensemble(cfg: FlywheelConfig, members: list[dict]) -> tuple[dict[str, dict], list[dict], list[dict]]:
    """Pin every model the members use to an immutable version: {key: {ref, label, sha256}}.
    An alias such as ``@champion`` is resolved now, so the run's cache keys name versions.

    A model that cannot be resolved (unknown version, unreachable registry) costs only the
    members that use it: they are dropped and reported as quarantine rows; the remaining
    members still propose (and top up to N). Returns (models, members kept, quarantine rows)."""
    models, problems = {}, {}
    for key in sorted({m["model"] for m in members}):
        ref = cfg.candidates.models.get(key)
        if ref is None:
            problems[key] = ("unknown model", f"model key {key!r} is not in candidates.models "
                                              f"({', '.join(cfg.candidates.models) or 'none'})")
            continue
        try:
            resolved = resolve_model(cfg, ref)
        except ModelNotFound as e:
            problems[key] = ("unknown model", str(e))
            continue
        except RegistryUnreachable as e:
            problems[key] = ("registry unreachable", str(e))
            continue
        pinned = f"models:/{resolved.label}" if not resolved.label.startswith("file:") else str(resolved.path)
        models[key] = {"ref": pinned, "label": resolved.label, "sha256": resolved.sha256}
    kept = [m for m in members if m["model"] in models]
    dropped = [{"item_id": m["name"], "kind": "member", "reason": problems[m["model"]][0],
                "detail": f"ensemble member {m['name']}: {problems[m['model']][1]}"} for m in members
               if m["model"] in problems]
    for row in dropped:
        log.error("%s; proposing without it", row["detail"])
    if not any(m["kind"] == "model" for m in kept):
        raise ModelNotFound("no ensemble member has a usable model: " + "; ".join(r["detail"] for r in dropped))
    return models, kept, dropped


def proposal_pool(cfg: FlywheelConfig, checkpoints: dict, members: list[dict], library) -> ProposalPool:
    """The process's proposal actors, started once per ensemble and reused by every part."""
    c = cfg.candidates
    key = (tuple(sorted((k, v[1]) for k, v in checkpoints.items())), str(members), c.num_candidates,
           c.actors, c.actor_num_cpus, c.actor_num_gpus, library is not None and tuple(library[0]))
    return _PROPOSAL_POOL.get(key, lambda: ProposalPool(
        checkpoints, tuple(Member(**m) for m in members), num_candidates=c.num_candidates, library=library,
        actors=c.actors, num_cpus=c.actor_num_cpus, num_gpus=c.actor_num_gpus))


close_proposal_pool = _PROPOSAL_POOL.close


# -- image pool -------------------------------------------------------------------------------

@flywheel_task(name="image-pool", version="1")
def build_image_pool(cfg: FlywheelConfig, source: str, source_version: str, max_image_bytes: int,
                     parent_run_id: str | None = None) -> DatasetRef:
    """Commit the round's (image, mask) pairs; bad items are quarantined with their reason.
    ``source_version``: the dataset version or the manifest file's digest (in the cache key)."""
    store = store_for(cfg)
    inputs = {"source": source, "source_version": source_version, "max_image_bytes": max_image_bytes}
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
                items = from_dataset(dataset)
            with DatasetWriter(store, IMAGE_POOL, version, inputs=inputs, parents=parents,
                               **writer_options(cfg)) as writer:
                for item in unique(items):
                    if isinstance(item, Rejected):
                        log.warning("image quarantined: %s", item.detail)
                    writer.put(item, "image")
            ref = writer.ref
        pool = Dataset(store, ref.name, ref.version)
        reasons = Counter(pool.quarantine().column("reason").to_pylist())
        mlflow.log_metrics({"objects": ref.num_rows, "quarantined": sum(reasons.values()),
                            **{f"quarantined_{r.replace(' ', '_')}": n for r, n in reasons.items()}})
        log_datasets(run_id, inputs=parents, outputs=[ref])
    return ref


# -- candidates -------------------------------------------------------------------------------

def _checkpoints(cfg: FlywheelConfig, models: dict) -> tuple[dict[str, tuple[str, str]], ModelConfig]:
    """Local checkpoint files of the pinned models, checked against their digests, and the
    (shared) input config of the ensemble."""
    out, configs = {}, {}
    for key, m in models.items():
        resolved = resolve_model(cfg, m["ref"])
        if resolved.sha256 != m["sha256"]:
            raise ValueError(f"model {m['label']}: checkpoint digest changed since the run pinned it")
        out[key] = (str(resolved.path), m["label"])
        configs[key] = ModelConfig(**read_checkpoint(resolved.path)["model_config"])
    first = next(iter(configs.values()))
    for key, c in configs.items():
        if (c.image_size, c.use_pointmap, c.resolution) != (first.image_size, first.use_pointmap, first.resolution):
            raise ValueError(f"ensemble models disagree on inputs/outputs: {key} has image_size {c.image_size}, "
                             f"use_pointmap {c.use_pointmap}, resolution {c.resolution}")
    return out, first


def _library(cfg: FlywheelConfig, library: DatasetRef | None, resolution: int):
    if library is None:
        return None
    ids, grids = [], []
    for s in Dataset(store_for(cfg), library.name, library.version).samples():
        occ = decode_npy(s["occ.npy"])
        if occ.shape == (resolution,) * 3:
            ids.append(s["__key__"])
            grids.append(occ)
    return (ids, np.stack(grids)) if ids else None


@flywheel_task(name="candidates-part", version="1")
def propose_part(cfg: FlywheelConfig, pool: DatasetRef, object_ids: list[str], models: dict,
                 members: list[dict], library: DatasetRef | None, settings: dict) -> DatasetRef:
    """Propose candidates for one part of the pool, on the Ray actors; commit a part."""
    inputs = {"pool": pool, "objects": object_ids, "models": models, "members": members, "library": library,
              "settings": settings}
    version = version_of(CANDIDATES, inputs=inputs, code_version=propose_part.version)
    store = store_for(cfg)
    existing = committed_ref(store, CANDIDATES_PART.name, version)
    if existing is not None:
        return existing
    checkpoints, model_cfg = _checkpoints(cfg, models)
    with DatasetWriter(store, CANDIDATES_PART, version, inputs=inputs, **writer_options(cfg)) as writer:
        examples, seen = {}, set()
        for s in Dataset(store, pool.name, pool.version).samples(keys=object_ids):
            seen.add(s["__key__"])
            rgb = np.asarray(Image.open(io.BytesIO(s["rgb.png"])).convert("RGB"))
            mask = np.asarray(Image.open(io.BytesIO(s["mask.png"]))) > 127
            try:
                crop, full = condition_inputs(model_cfg, rgb, mask, name=s["__key__"])
            except ValueError as e:
                writer.quarantine(s["__key__"], "object", "bad condition", str(e))
                continue
            examples[s["__key__"]] = {"crop": crop, "full": full, "full_valid": torch.tensor(True)}
        for o in object_ids:
            if o not in seen:
                writer.quarantine(o, "object", "missing object", f"{o} is not in {pool}")
        ready = [o for o in object_ids if o in examples]
        jobs = [ProposalJob(f"{version[:12]}-{i}", ids, collate([examples[o] for o in ids]))
                for i, ids in enumerate(batches(ready, settings["objects_per_job"]))]
        results = {r.id: r for r in proposal_pool(cfg, checkpoints, members,
                                                  _library(cfg, library, model_cfg.resolution)).run(jobs)}
        for job in jobs:  # job order: the part's content does not depend on which actor finished first
            result = results[job.id]
            for oid in job.object_ids:
                if not result.ok:
                    writer.quarantine(oid, "object", "proposal failed", f"{oid}: {result.reason}")
                    continue
                for cand in result.candidates[oid]:
                    writer.add(cand.candidate_id, cand.row(), {"occ.npy": encode_npy(cand.occupancy)})
    return writer.ref


@flywheel_task(name="candidates", version="1")
def assemble_candidates(cfg: FlywheelConfig, pool: DatasetRef, parts: list[DatasetRef], models: dict,
                        members: list[dict], library: DatasetRef | None, settings: dict, dropped: list[dict],
                        parent_run_id: str | None = None) -> DatasetRef:
    """Commit the round's candidate dataset (the candidate registry) from its parts, with the
    dropped ensemble members in its quarantine table."""
    store = store_for(cfg)
    inputs = {"pool": pool, "models": models, "members": members, "library": library, "settings": settings}
    version = version_of(CANDIDATES, inputs={**inputs, "parts": [p.version for p in parts], "dropped": dropped},
                         code_version=assemble_candidates.version)
    parents = [pool] + ([library] if library else [])
    params = {"num_candidates": settings["num_candidates"], "members": ", ".join(m["name"] for m in members),
              **{f"model.{k}": m["label"] for k, m in models.items()}}
    with stage(cfg, parent_run_id, "candidates", params=params) as run_id:
        ref = assemble_dataset(store, CANDIDATES, version, parts, inputs=inputs, parents=parents,
                               quarantine=dropped, **writer_options(cfg))
        dataset = Dataset(store, ref.name, ref.version)
        manifest = dataset.manifest()
        per_object = Counter(manifest.column("object_id").to_pylist())
        reasons = Counter(dataset.quarantine().column("reason").to_pylist())
        metrics = {"candidates": ref.num_rows, "objects": len(per_object), "quarantined": sum(reasons.values()),
                   "candidates_per_object_min": min(per_object.values(), default=0),
                   **{f"member_{k}": n for k, n in Counter(manifest.column("member").to_pylist()).items()},
                   **{f"quarantined_{r.replace(' ', '_')}": n for r, n in reasons.items()}}
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        log_datasets(run_id, inputs=parents, outputs=[ref])
        log.info("%s: %s", ref, metrics)
    return ref


# -- previews and annotation tasks --------------------------------------------------------------

def _mesh_npz(occupancy: np.ndarray) -> bytes | None:
    """The candidate's marching-cubes surface in the mesh library's file format (grey)."""
    mesh = occupancy_to_mesh(occupancy)
    if len(mesh.faces) == 0:
        return None
    return CleanMesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32),
                     np.full((len(mesh.vertices), 4), 200, np.uint8), watertight=mesh.is_watertight).to_npz()


def _crop_view(rgb: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The annotator's reference: the object's crop with everything else dimmed."""
    ys, xs = np.nonzero(mask)
    pad = max(4, int(0.15 * max(ys.ptp() + 1, xs.ptp() + 1)))
    y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    shown = np.where(mask[..., None], rgb, (rgb * 0.35).astype(np.uint8))[y0:y1, x0:x1]
    return np.asarray(Image.fromarray(shown).resize((size, size), Image.Resampling.BILINEAR))


@flywheel_task(name="annotation-tasks", version="1")
def publish_annotation_tasks(cfg: FlywheelConfig, candidates: DatasetRef, pool: DatasetRef, views: int,
                             resolution: int, parent_run_id: str | None = None) -> dict:
    """Render every candidate from a few views (Blender Workbench), save one contact sheet
    per object, and publish the native task file and the Label Studio import files under
    ``annotation/<candidates version>/`` in the store."""
    store = store_for(cfg)
    prefix = f"annotation/{candidates.version}"
    rows = Dataset(store, candidates.name, candidates.version).manifest().to_pylist()
    by_object: dict[str, list[dict]] = {}
    for row in rows:
        by_object.setdefault(row["object_id"], []).append(row)
    occ = {s["__key__"]: decode_npy(s["occ.npy"]) for s in Dataset(store, candidates.name, candidates.version).samples()}
    with stage(cfg, parent_run_id, "annotation-tasks", params={"views": views, "resolution": resolution}) as run_id, \
            tempfile.TemporaryDirectory(prefix="flywheel-previews-") as tmp:
        jobs, blank = [], np.zeros((resolution, resolution * views, 4), np.uint8)
        for oid, cands in by_object.items():
            scenes = []
            for c in cands:
                data = _mesh_npz(occ[c["candidate_id"]])
                if data is not None:
                    path = Path(tmp) / f"{c['candidate_id']}.npz"
                    path.write_bytes(data)
                    scenes.append(preview_scene(str(path), views, resolution).to_dict())
            jobs.append(Job(oid, "rendering.previews:render_previews", {"scenes": scenes, "out_dir": f"{tmp}/{oid}"}))
        results = {r.id: r for r in render_pool(cfg).run(jobs)}
        pool_samples = {s["__key__"]: s for s in Dataset(store, pool.name, pool.version).samples(keys=list(by_object))}
        tasks, sheets = [], []
        for oid, cands in by_object.items():
            result = results[oid]
            files = iter(result.result if result.ok and isinstance(result.result, list) else [])
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
            sheet = image_sheet([_crop_view(rgb, mask, resolution)] + strips,
                                ["input"] + [f"{c['member']} seed {c['seed']}" if c["kind"] == "model"
                                             else f"{c['member']} {c['retrieved_mesh_id'][:12]}" for c in cands],
                                Path(tmp) / "sheets" / f"{oid}.png", columns=3)
            sheets.append(sheet)
            store.put_file(f"{prefix}/sheets/{oid}.png", sheet)
            tasks.append({"task_id": f"{candidates.version}/{oid}", "object_id": oid,
                          "candidates_dataset": str(candidates), "image": store.uri(f"{prefix}/inputs/{oid}.png"),
                          "mask": store.uri(f"{prefix}/inputs/{oid}-mask.png"),
                          "sheet": store.uri(f"{prefix}/sheets/{oid}.png"), "candidates": entries,
                          "kinds": ["pairwise", "best-of-n", "reject-all"]})
            store.put_bytes(f"{prefix}/inputs/{oid}.png", sample["rgb.png"])
            store.put_bytes(f"{prefix}/inputs/{oid}-mask.png", sample["mask.png"])
        outputs = {"tasks": ("tasks.jsonl", annotation.native_tasks(tasks)),
                   "label_studio_pairwise": ("label_studio_pairwise.json",
                                             json.dumps(annotation.label_studio_pairwise(tasks), indent=1)),
                   "label_studio_ranking": ("label_studio_ranking.json",
                                            json.dumps(annotation.label_studio_ranking(tasks), indent=1))}
        summary: dict[str, int | str] = {"objects": len(tasks), "candidates": len(rows)}
        for name, (filename, text) in outputs.items():
            store.put_bytes(f"{prefix}/{filename}", text.encode())
            (Path(tmp) / filename).write_text(text)
            mlflow.log_artifact(str(Path(tmp) / filename), "annotation")
            summary[name] = store.uri(f"{prefix}/{filename}")
        for sheet in sheets[:4]:
            mlflow.log_artifact(str(sheet), "candidate_sheets")
        mlflow.log_metrics({"objects": len(tasks), "candidates": len(rows),
                            "preview_failures": sum(not r.ok for r in results.values())})
        log_datasets(run_id, inputs=[candidates, pool])
    return summary
