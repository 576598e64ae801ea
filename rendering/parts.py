"""One batch of renders as items of a dataset part: Iso-3DO objects (every view) and
Flying-Occlusions samples. Scenes are sampled here, rendered by ``render`` (the Blender
workers) and turned into :class:`Sample` s; whatever cannot be made is a :class:`Rejected`
with its reason. Items come in input order, so a part's content does not depend on which
worker finished first."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.core.config import StoreConfig
from flywheel.core.datasets import Dataset
from flywheel.core.digests import digest_of
from flywheel.core.records import Rejected, Sample
from rendering.backgrounds import crop, load_backgrounds
from rendering.iso3do import iso3do_scene, view_samples
from rendering.occlusions import occlusion_sample
from rendering.pool import Job, JobResult

log = logging.getLogger(__name__)
Render = Callable[[list[Job]], list[JobResult]]
OCCLUSION_JOB_SETTINGS = (
    "resolution",
    "samples",
    "fov_deg",
    "visible_band",
    "max_tries",
    "min_occludee_pixels",
    "elevation_deg",
    "max_tilt_deg",
    "tumble_share",
    "device",
)


def mesh_files(library: Dataset, ids: list[str], folder: Path) -> dict[str, tuple[str, bytes]]:
    """Write the meshes ``ids`` of ``library`` for the workers: id -> (npz path, occupancy bytes)."""
    out = {}
    for sample in library.samples(keys=ids):
        path = folder / f"{sample['__key__']}.npz"
        path.write_bytes(sample["mesh.npz"])
        out[sample["__key__"]] = (str(path), sample["occ.npy"])
    return out


def _object_rng(seed: int, object_id: str) -> np.random.Generator:
    """Per-object randomness: independent of batch boundaries and of the other objects."""
    return np.random.default_rng([seed, int(digest_of(object_id)[:12], 16)])


def iso3do_part(
    library: Dataset, object_ids: list[str], settings: dict[str, Any], render: Render, workdir: Path
) -> Iterator[Sample | Rejected]:
    """Every view of each object in ``object_ids`` (settings: :class:`~flywheel.core.config.Iso3doConfig`
    fields and the render device)."""
    meshes = mesh_files(library, object_ids, workdir)
    scenes, jobs = {}, []
    for oid in object_ids:
        if oid not in meshes:
            yield Rejected(oid, "missing mesh", f"{oid} not in {library.ref}", kind="object")
            continue
        scenes[oid] = iso3do_scene(
            meshes[oid][0],
            _object_rng(settings["seed"], oid),
            views=settings["views"],
            resolution=settings["resolution"],
            samples=settings["samples"],
            fov_deg=settings["fov_deg"],
            camera_distance=settings["camera_distance"],
            elevation_deg=settings["elevation_deg"],
            device=settings["device"],
        )
        jobs.append(
            Job(oid, "rendering.iso3do:render_job", {"scene": scenes[oid].to_dict(), "out_dir": f"{workdir}/{oid}"})
        )
    results = {r.id: r for r in render(jobs)}
    for oid in object_ids:
        result = results.get(oid)
        if result is None:
            continue
        if not result.ok:
            log.warning("object %s quarantined: %s", oid, result.reason)
            yield Rejected(oid, "render failed", f"{oid}: {result.reason}", kind="object")
            continue
        for key, row, files in view_samples(oid, scenes[oid], result.result, f"{workdir}/{oid}", meshes[oid][1]):
            yield Sample(key, row, files)


def occlusions_part(
    library: Dataset,
    indices: list[int],
    settings: dict[str, Any],
    store_config: StoreConfig,
    render: Render,
    workdir: Path,
) -> Iterator[Sample | Rejected]:
    """Flying-Occlusions samples ``indices``: an occluder/occludee pair of the library's meshes
    rendered on a photo, kept when the occludee's visible fraction is inside the band
    (settings: :class:`~flywheel.core.config.OcclusionsConfig` fields and the render device)."""
    mesh_ids = sorted(library.manifest().column("mesh_id").to_pylist())
    backgrounds, bad = load_backgrounds(settings["background_source"], store_config)
    for name, reason in bad:
        yield Rejected(name, "bad background", reason, kind="background")
    if not backgrounds or len(mesh_ids) < 2:
        for i in indices:
            yield Rejected(
                f"fo-{i:06d}",
                "no inputs",
                f"need 2+ meshes and 1+ background, have {len(mesh_ids)} / {len(backgrounds)}",
                kind="sample",
            )
        return
    # occludees go through the library in a seeded order (every mesh once before any twice:
    # a held-out set of n samples from n meshes shows n distinct objects); occluders at random
    order = np.random.default_rng(settings["seed"]).permutation(len(mesh_ids))
    picks = {}
    for i in indices:
        rng = np.random.default_rng([settings["seed"], i])
        a = int(order[i % len(mesh_ids)])
        b = int((a + 1 + rng.integers(len(mesh_ids) - 1)) % len(mesh_ids))
        picks[i] = (mesh_ids[a], mesh_ids[b], int(rng.integers(len(backgrounds))), rng)
    meshes = mesh_files(library, sorted({m for p in picks.values() for m in p[:2]}), workdir)
    jobs = [
        Job(
            f"fo-{i:06d}",
            "rendering.occlusions:occlusion_job",
            {
                "occludee_mesh": meshes[p[0]][0],
                "occluder_mesh": meshes[p[1]][0],
                "seed": int(p[3].integers(2**31)),
                "out_dir": f"{workdir}/fo-{i:06d}",
                **{k: settings[k] for k in OCCLUSION_JOB_SETTINGS},
            },
        )
        for i, p in picks.items()
    ]
    results = {r.id: r for r in render(jobs)}
    for i in indices:
        sid = f"fo-{i:06d}"
        occludee, occluder, bg, rng = picks[i]
        result = results[sid]
        if not result.ok:
            yield Rejected(sid, "render failed", f"{sid}: {result.reason}", kind="sample")
        elif not result.result["accepted"]:
            yield Rejected(
                sid,
                "no layout in band",
                f"{sid}: no layout inside the band after {result.result['tries']} tries ({result.result['rejected']})",
                kind="sample",
            )
        else:
            photo = crop(backgrounds[bg], rng, settings["resolution"])
            key, row, files = occlusion_sample(
                sid,
                result.result,
                f"{workdir}/{sid}",
                photo,
                occludee,
                occluder,
                backgrounds[bg].background_id,
                meshes[occludee][1],
            )
            yield Sample(key, row, files)
