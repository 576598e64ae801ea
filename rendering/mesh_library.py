"""Building the mesh library: sources -> safe load -> filters -> dedupe -> occupancy.

Sources: ``None`` (the seeded procedural generator), a local folder, an ``s3://`` prefix,
or a manifest file (``.txt``: one URI per line; ``.jsonl``: ``{"uri": ...}`` per line) of
local paths or ``s3://`` URIs. Each item becomes either a sample of the ``meshes`` dataset
or a quarantine row with its reason.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flywheel.core.codecs import encode_npy
from flywheel.core.config import StoreConfig
from flywheel.core.records import Rejected, Sample
from flywheel.core.store import S3Store, StoreError
from rendering.meshes import (
    MESH_FORMATS,
    CleanMesh,
    MeshFilter,
    MeshRejected,
    clean,
    load_mesh_file,
    occupancy,
    procedural_mesh,
)


@dataclass(frozen=True)
class MeshItem:
    source: str  # URI people recognise
    load: Callable[[], tuple[object, str, str]]  # -> (trimesh, format, family)


def procedural_items(seed: int, count: int) -> Iterator[MeshItem]:
    for i in range(count):

        def load(i=i):
            mesh, family = procedural_mesh(seed, i)
            return mesh, "procedural", family

        yield MeshItem(f"procedural:{seed}/{i}", load)


def _file_item(path: Path, source: str, limits: MeshFilter) -> MeshItem:
    def load():
        mesh, fmt = load_mesh_file(path, limits)
        return mesh, fmt, "user"

    return MeshItem(source, load)


def _s3_items(uri: str, store_config: StoreConfig, limits: MeshFilter, workdir: Path) -> Iterator[MeshItem]:
    """Objects under an s3:// prefix (or one object), each downloaded with the files that sit
    next to it, so that OBJ/MTL/texture and glTF/bin references resolve within its folder."""
    bucket_prefix = uri.rstrip("/")
    store = S3Store(bucket_prefix if "/" in bucket_prefix[5:] else bucket_prefix, store_config)
    objects = [o for o in store.list("")] or []
    if not objects:  # a single object URI rather than a prefix
        parent, _, name = bucket_prefix.rpartition("/")
        store = S3Store(parent, store_config)
        objects = [o for o in store.list("") if o.key == name]
    keys = [o.key for o in objects]
    for key in keys:
        if Path(key).suffix.lower() not in MESH_FORMATS:
            continue

        def load(key=key):
            folder = Path(tempfile.mkdtemp(dir=workdir))
            base = key.rpartition("/")[0]
            for sibling in keys:  # the mesh and its neighbours, same relative layout
                if sibling.rpartition("/")[0] == base:
                    target = folder / sibling.rpartition("/")[2]
                    target.write_bytes(store.get_bytes(sibling))
            mesh, fmt = load_mesh_file(folder / key.rpartition("/")[2], limits)
            return mesh, fmt, "user"

        yield MeshItem(store.uri(key), load)


def source_items(source: str, store_config: StoreConfig, limits: MeshFilter, workdir: Path) -> Iterator[MeshItem]:
    """The items of a folder, manifest or s3:// prefix; S3 objects are fetched into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if source.startswith("s3://"):
        yield from _s3_items(source, store_config, limits, workdir)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in MESH_FORMATS):
            yield _file_item(f, str(f), limits)
    elif path.suffix in (".txt", ".jsonl"):
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            uri = json.loads(line)["uri"] if path.suffix == ".jsonl" else line
            if uri.startswith("s3://"):
                yield from _s3_items(uri, store_config, limits, workdir)
            else:
                f = (path.parent / uri) if not Path(uri).is_absolute() else Path(uri)
                yield _file_item(f, uri, limits)
    else:
        raise FileNotFoundError(f"mesh source {source!r}: not a folder, manifest (.txt/.jsonl) or s3:// prefix")


def library_samples(items: Iterator[MeshItem], resolution: int, limits: MeshFilter) -> Iterator[Sample | Rejected]:
    """Yield a :class:`Sample` or a :class:`Rejected` (by source) per item.

    Duplicates (same normalised geometry) keep the first source, in source order."""
    seen: dict[str, str] = {}
    for item in items:
        try:
            mesh, fmt, family = item.load()
            cleaned: CleanMesh = clean(mesh, limits)
        except MeshRejected as e:
            yield Rejected(item.source, e.reason, str(e))
            continue
        except (OSError, StoreError) as e:
            yield Rejected(item.source, "unreadable", f"{type(e).__name__}: {e}")
            continue
        mesh_id = cleaned.mesh_id
        if mesh_id in seen:
            yield Rejected(item.source, "duplicate", f"same geometry as {seen[mesh_id]}")
            continue
        seen[mesh_id] = item.source
        occ = occupancy(cleaned, resolution)
        row = {
            "mesh_id": mesh_id,
            "source": item.source,
            "format": fmt,
            "family": family,
            "num_vertices": len(cleaned.vertices),
            "num_faces": len(cleaned.faces),
            "watertight": cleaned.watertight,
            "occupancy_resolution": resolution,
            "occupied_fraction": float(occ.mean()),
        }
        yield Sample(mesh_id, row, {"mesh.npz": cleaned.to_npz(), "occ.npy": encode_npy(occ)})
