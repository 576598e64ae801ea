"""Building the mesh library: sources -> safe load -> filters -> dedupe -> occupancy.

Sources: ``None`` (the seeded procedural generator), a local folder, an ``s3://`` prefix,
or a manifest file (``.txt``: one URI per line; ``.jsonl``: ``{"uri": ...}`` per line) of
local paths or ``s3://`` URIs. Each item becomes either a sample of the ``meshes`` dataset
or a quarantine row with its reason.

A local source has a root — the folder, or the manifest's folder — and every entry (a file
found in the folder, a manifest line, the target of a symlink) must resolve inside it after
``realpath``; so must the files a mesh refers to (MTL, textures, glTF buffers). What a source
holds is digested by :func:`source_contents`, so that a changed, added or removed file makes
a new library version while an unchanged source stays cached.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flywheel.core.codecs import encode_npy
from flywheel.core.config import StoreConfig
from flywheel.core.digests import file_digest
from flywheel.core.records import ItemWarning, Rejected, Sample
from flywheel.core.store import ObjectInfo, S3Store, StoreError
from rendering.meshes import (
    MESH_FORMATS,
    PROCEDURAL_FAMILIES,
    CleanMesh,
    MeshFilter,
    MeshRejected,
    clean,
    load_mesh_file,
    occupancy,
    procedural_mesh,
    to_z_up,
)


@dataclass(frozen=True)
class MeshItem:
    source: str  # URI people recognise
    load: Callable[[], tuple[object, str, str, list[ItemWarning]]]  # -> (trimesh, format, family, warnings)


def procedural_items(seed: int, count: int, families: tuple[str, ...] = PROCEDURAL_FAMILIES) -> Iterator[MeshItem]:
    for i in range(count):

        def load(i=i):
            mesh, family = procedural_mesh(seed, i, families)
            return mesh, "procedural", family, []

        yield MeshItem(f"procedural:{seed}/{i}", load)


def _file_item(path: Path, source: str, limits: MeshFilter, root: Path, up_axis: str) -> MeshItem:
    """A local mesh file of a source whose root is ``root``: refused when it resolves outside."""

    def load():
        real = path.resolve()
        if not real.is_relative_to(root):
            raise MeshRejected("outside the source", f"{source!r} resolves to {real}, outside {root}")
        mesh, fmt, warnings = load_mesh_file(real, limits, root=root)
        return to_z_up(mesh, fmt, up_axis), fmt, "user", warnings

    return MeshItem(source, load)


def file_sample(path: Path, source: str, resolution: int, limits: MeshFilter, root: Path) -> Sample | Rejected:
    """One mesh file through the library's ingestion (safe loading, up axis by format, filters,
    normalisation, occupancy), on its own: no de-duplication against other files."""
    return next(library_samples(iter([_file_item(path, source, limits, root.resolve(), "auto")]), resolution, limits))


def _s3_objects(uri: str, store_config: StoreConfig) -> tuple[S3Store, list[ObjectInfo]]:
    """The objects an ``s3://`` URI names: those under it as a prefix, else the one object it is;
    with the store their keys are relative to."""
    bucket_prefix = uri.rstrip("/")
    store = S3Store(bucket_prefix, store_config)
    objects = list(store.list(""))
    if not objects:  # a single object URI rather than a prefix
        parent, _, name = bucket_prefix.rpartition("/")
        store = S3Store(parent, store_config)
        objects = [o for o in store.list("") if o.key == name]
    return store, objects


def _manifest_uris(path: Path) -> Iterator[str]:
    """The URIs a ``.txt`` (one per line, ``#`` comments) or ``.jsonl`` (``{"uri": ...}``) manifest lists."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield json.loads(line)["uri"] if path.suffix == ".jsonl" else line


def _s3_items(
    uri: str, store_config: StoreConfig, limits: MeshFilter, workdir: Path, up_axis: str
) -> Iterator[MeshItem]:
    """Objects under an s3:// prefix (or one object), each downloaded with the files that sit
    next to it, so that OBJ/MTL/texture and glTF/bin references resolve within its folder."""
    store, objects = _s3_objects(uri, store_config)
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
            mesh, fmt, warnings = load_mesh_file(folder / key.rpartition("/")[2], limits)
            return to_z_up(mesh, fmt, up_axis), fmt, "user", warnings

        yield MeshItem(store.uri(key), load)


def source_items(
    source: str, store_config: StoreConfig, limits: MeshFilter, workdir: Path, up_axis: str = "auto"
) -> Iterator[MeshItem]:
    """The items of a folder, manifest or s3:// prefix; S3 objects are fetched into ``workdir``.
    Each mesh is turned to +z up from ``up_axis`` (see :func:`~rendering.meshes.to_z_up`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if source.startswith("s3://"):
        yield from _s3_items(source, store_config, limits, workdir, up_axis)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        root = path.resolve()
        for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in MESH_FORMATS):
            yield _file_item(f, str(f), limits, root, up_axis)
    elif path.suffix in (".txt", ".jsonl"):
        root = path.parent.resolve()
        for uri in _manifest_uris(path):
            if uri.startswith("s3://"):
                yield from _s3_items(uri, store_config, limits, workdir, up_axis)
            else:
                f = (path.parent / uri) if not Path(uri).is_absolute() else Path(uri)
                yield _file_item(f, uri, limits, root, up_axis)
    else:
        raise FileNotFoundError(f"mesh source {source!r}: not a folder, manifest (.txt/.jsonl) or s3:// prefix")


def _tree_digest(root: Path) -> list[tuple[str, str]]:
    """(path relative to ``root``, sha256) of every file under it; a symlink counts with the
    content it points to (and is refused at load when that is outside)."""
    out = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        out.append((f.relative_to(root).as_posix(), file_digest(f)))
    return out


def _s3_listing(uri: str, store_config: StoreConfig) -> list[tuple[str, int, float]]:
    return [(o.key, o.size, o.mtime) for o in _s3_objects(uri, store_config)[1]]


def source_contents(source: str, store_config: StoreConfig) -> str:
    """A digest of everything a mesh source holds now: every file under a folder (sidecars
    included), a manifest and every file under its folder plus the S3 objects it names, the
    objects under an ``s3://`` prefix (key, size, modification time: a re-upload of the same
    bytes makes a new version, never a stale one)."""
    if source.startswith("s3://"):
        return hashlib.sha256(json.dumps(_s3_listing(source, store_config)).encode()).hexdigest()
    path = Path(source).expanduser()
    if path.is_dir():
        parts: list[tuple[str, object]] = list(_tree_digest(path))
    elif path.suffix in (".txt", ".jsonl") and path.is_file():
        parts = list(_tree_digest(path.parent))
        parts += [(uri, _s3_listing(uri, store_config)) for uri in _manifest_uris(path) if uri.startswith("s3://")]
    else:
        raise FileNotFoundError(f"mesh source {source!r}: not a folder, manifest (.txt/.jsonl) or s3:// prefix")
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class _Surfaces:
    """Meshes by where they came from, to find a mesh's twin: the same content id, or the
    same surface (:meth:`CleanMesh.same_surface`, tried on meshes with as many faces)."""

    def __init__(self) -> None:
        self.by_id: dict[str, str] = {}
        self.by_faces: dict[int, list[tuple[CleanMesh, str]]] = {}

    def add(self, mesh: CleanMesh, where: str) -> None:
        self.by_id[mesh.mesh_id] = where
        self.by_faces.setdefault(len(mesh.faces), []).append((mesh, where))

    def twin(self, mesh: CleanMesh) -> str | None:
        """Where the first mesh with ``mesh``'s surface came from (None: no such mesh)."""
        return self.by_id.get(mesh.mesh_id) or next(
            (where for other, where in self.by_faces.get(len(mesh.faces), []) if mesh.same_surface(other)), None
        )


def library_samples(
    items: Iterator[MeshItem],
    resolution: int,
    limits: MeshFilter,
    held_out: Iterable[tuple[CleanMesh, str]] = (),
) -> Iterator[Sample | Rejected]:
    """Yield a :class:`Sample` or a :class:`Rejected` (by source) per item.

    Duplicates (the same normalised surface, up to float round-off and vertex order: the same
    asset as .obj and .glb) keep the first source, in source order. A mesh with the surface of
    one of ``held_out`` (mesh, where it is) is quarantined as "held out": a library to train
    on never holds an object that an evaluation scores as unseen."""
    held, kept = _Surfaces(), _Surfaces()
    for unseen, where in held_out:
        held.add(unseen, where)
    for item in items:
        try:
            mesh, fmt, family, warnings = item.load()
            cleaned: CleanMesh = clean(mesh, limits)
        except MeshRejected as e:
            yield Rejected(item.source, e.reason, str(e))
            continue
        except (OSError, StoreError) as e:
            yield Rejected(item.source, "unreadable", f"{type(e).__name__}: {e}")
            continue
        if (twin := held.twin(cleaned)) is not None:
            yield Rejected(item.source, "held out", f"same geometry as held-out mesh {twin}")
            continue
        if (twin := kept.twin(cleaned)) is not None:
            yield Rejected(item.source, "duplicate", f"same geometry as {twin}")
            continue
        kept.add(cleaned, item.source)
        occ = occupancy(cleaned, resolution)
        row = {
            "mesh_id": cleaned.mesh_id,
            "source": item.source,
            "format": fmt,
            "family": family,
            "num_vertices": len(cleaned.vertices),
            "num_faces": len(cleaned.faces),
            "watertight": cleaned.watertight,
            "occupancy_resolution": resolution,
            "occupied_fraction": float(occ.mean()),
        }
        yield Sample(cleaned.mesh_id, row, {"mesh.npz": cleaned.to_npz(), "occ.npy": encode_npy(occ)}, tuple(warnings))
