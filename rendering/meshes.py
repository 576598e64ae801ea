"""The mesh library: a seeded procedural generator, safe loading of user meshes, the
paper's geometric filters, normalisation, de-duplication and occupancy targets.

Mesh files are untrusted input (ENVIRONMENT.md): every file reference inside a glTF or an
OBJ/MTL is resolved and refused if it leaves the mesh's own folder, *before* a loader sees
the file; trimesh's silent fixes (dropping NaN vertices, empty scenes, point clouds,
missing textures) are checked explicitly. Blender never opens a user file: it receives
the cleaned arrays (vertices, faces, vertex colours) written here.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from flywheel.core.records import ItemWarning

MESH_FORMATS = {".glb": "glb", ".gltf": "gltf", ".obj": "obj", ".ply": "ply", ".stl": "stl"}
#: The synthetic world's families, then the ones only the demo's "real" world uses (a lamp or
#: bottle stacked along its axis, a mug with a handle): part compositions training never showed.
PROCEDURAL_FAMILIES = ("superquadric", "torus", "extrusion", "compound", "capsule")
REAL_WORLD_FAMILIES = ("stack", "handled")
#: The up axis a format's assets usually have: glTF is +Y up by specification, and most OBJ
#: exporters write +Y up; PLY and STL come from scanners and CAD, mostly +Z up.
FORMAT_UP = {"glb": "y", "gltf": "y", "obj": "y", "ply": "z", "stl": "z"}
_Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


class MeshRejected(ValueError):
    """A mesh failed loading or a geometric filter; ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class MeshFilter:
    max_faces: int = 200_000
    max_file_bytes: int = 64 * 2**20
    min_extent_ratio: float = 1e-3  # flat: smallest / largest extent below this
    max_components: int = 50  # fragmented: more pieces than this ...
    min_main_component_share: float = 0.2  # ... or the biggest piece holds less of the area
    min_face_area: float = 1e-12  # degenerate faces (in normalised units)


@dataclass(frozen=True)
class CleanMesh:
    """A normalised mesh (unit cube centred at the origin) with per-vertex sRGB colours."""

    vertices: np.ndarray  # float32[V, 3]
    faces: np.ndarray  # int32[F, 3]
    colors: np.ndarray  # uint8[V, 4]
    watertight: bool

    @property
    def mesh_id(self) -> str:
        """Content digest of the geometry: the same surface gives the same id whatever the
        file format's vertex indexing (STL repeats vertices per face, PLY shares them)."""
        tri = np.rint(self.vertices[self.faces].astype(np.float64) * 1e5).astype(np.int64)  # [F,3,3]
        key = tri[..., 0] * 10**12 + tri[..., 1] * 10**6 + tri[..., 2]
        tri = np.take_along_axis(tri, np.argsort(key, axis=1)[..., None], axis=1).reshape(-1, 9)
        tri = tri[np.lexsort(tri.T[::-1])]
        return "mesh-" + hashlib.sha256(tri.tobytes()).hexdigest()[:16]

    def same_surface(self, other: CleanMesh, tol: float = 5e-3) -> bool:
        """The same surface up to what a format conversion leaves: float round-off (an OBJ's
        6 decimals on a 4 cm asset are 2.5e-5 of its normalised size), vertex and face order,
        and the diagonal a quad is split along (robosuite's cereal box: its OBJ and STL differ
        by 0.23 % of its size there). As many faces, surface areas within 0.1 %, and every
        vertex and 512 surface samples of each mesh within ``tol`` (of the unit size) of the
        other's surface."""
        if len(self.faces) != len(other.faces) or not np.isclose(self.area(), other.area(), rtol=1e-3):
            return False
        for a, b in ((self, other), (other, self)):
            points = np.concatenate([a.vertices, a.surface_samples(512)])
            if np.max(b.trimesh().nearest.on_surface(points)[1]) > tol:
                return False
        return True

    def surface_samples(self, count: int) -> np.ndarray:
        """``count`` points on the surface, the same for the same mesh (a fixed seed)."""
        import trimesh

        return np.asarray(trimesh.sample.sample_surface(self.trimesh(), count, seed=0)[0])

    def area(self) -> float:
        tri = self.vertices[self.faces].astype(np.float64)
        return float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum() / 2)

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, vertices=self.vertices, faces=self.faces, colors=self.colors)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> CleanMesh:
        z = np.load(io.BytesIO(data))
        return cls(z["vertices"], z["faces"], z["colors"], watertight=False)

    def to_ply(self) -> bytes:
        """The mesh as a binary PLY file (+z up, as the format has it), colours kept."""
        return bytes(self.trimesh().export(file_type="ply"))

    def trimesh(self):
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=self.colors, process=False)


# -- safe loading ---------------------------------------------------------------------------


#: An absolute Windows path (``E:\\assets\\wood.png``), as exporters leave in MTL files.
WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


def _inside(base: Path, ref: str, what: str, root: Path) -> Path:
    """``ref`` (relative to ``base``) as a real path inside ``root``, or :class:`MeshRejected`."""
    ref = unquote(ref)
    if re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I):
        raise MeshRejected("unsafe reference", f"{what} {ref!r} is a URL; only files of the source are allowed")
    target = (base / ref).resolve()
    if not target.is_relative_to(root.resolve()):
        raise MeshRejected("unsafe reference", f"{what} {ref!r} points outside {root}")
    return target


def check_references(path: Path, root: Path | None = None) -> tuple[list[ItemWarning], int]:
    """Refuse glTF/OBJ files whose buffers, images, MTLs or textures leave ``root`` (default:
    the mesh's folder; a library source passes its own root) after ``realpath``, and a glTF
    whose buffers (its geometry) are missing. A missing material library, texture or image is
    not fatal — the mesh renders in the default material — but is returned as a warning
    (trimesh would drop it silently). -> (warnings, textures and images found)"""
    base = path.parent
    root = base if root is None else root
    ext = path.suffix.lower()
    warnings, found = [], 0
    if ext == ".gltf":
        try:
            doc = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MeshRejected("unreadable", f"not valid glTF JSON: {e}") from None
        for kind in ("buffers", "images"):
            for item in doc.get(kind, []):
                uri = item.get("uri")
                if uri and not uri.startswith("data:") and not _inside(base, uri, kind[:-1], root).exists():
                    if kind == "buffers":
                        raise MeshRejected("missing file", f"buffer {uri!r} not found")
                    warnings.append(ItemWarning("default material", f"image {uri!r} not found"))
                elif uri and kind == "images":
                    found += 1
    elif ext == ".obj":
        for mtl_ref in re.findall(rb"^\s*mtllib\s+(.+?)\s*$", path.read_bytes(), re.M):
            mtl = _inside(base, mtl_ref.decode(errors="replace"), "material library", root)
            if not mtl.exists():
                warnings.append(ItemWarning("default material", f"material library {mtl.name!r} not found"))
                continue
            for tex in re.findall(
                rb"^\s*(?:map_\w+|bump|disp|decal|norm)\s+(?:-\S+\s+\S+\s+)*(.+?)\s*$", mtl.read_bytes(), re.M
            ):
                ref = tex.decode(errors="replace")
                if WINDOWS_PATH.match(ref):  # written on another machine: nothing here to read
                    warnings.append(ItemWarning("default material", f"texture {ref!r} is a path on another machine"))
                    continue
                texture = _inside(mtl.parent, ref, "texture", root)
                if not texture.exists():
                    warnings.append(ItemWarning("default material", f"texture {texture.name!r} not found"))
                else:
                    found += 1
    return warnings, found


def _raw_vertices_finite(path: Path) -> bool:
    """trimesh drops NaN/inf vertices silently; look at the raw numbers first."""
    ext = path.suffix.lower()
    if ext == ".obj":
        for line in path.read_bytes().splitlines():
            if line.startswith(b"v "):
                try:
                    if not all(math.isfinite(float(x)) for x in line.split()[1:4]):
                        return False
                except ValueError:
                    raise MeshRejected("unreadable", f"bad vertex line {line[:60]!r}") from None
        return True
    return True  # binary formats: checked on the loaded arrays with process=False


def load_mesh_file(path: str | Path, limits: MeshFilter = MeshFilter(), root: Path | None = None):
    """Load one user mesh with trimesh, safely; returns (trimesh.Trimesh, source format,
    warnings). The files it refers to must lie inside ``root`` (default: the mesh's folder)."""
    import trimesh

    path = Path(path)
    fmt = MESH_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MeshRejected("unsupported format", f"{path.suffix or 'no extension'}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise MeshRejected("unreadable", e.strerror or str(e)) from None
    if size > limits.max_file_bytes:
        raise MeshRejected("file too large", f"{size} bytes > {limits.max_file_bytes}")
    if size == 0:
        raise MeshRejected("empty", "file has 0 bytes")
    warnings, textures = check_references(path, root)
    if not _raw_vertices_finite(path):
        raise MeshRejected("non-finite vertices", "NaN or infinite coordinates")
    # check_references confined every file the mesh names to the source root; trimesh's own
    # resolver would refuse (and silently drop) a texture in a sibling folder (../textures/x.png)
    resolver = trimesh.resolvers.FilePathResolver(str(path), allow_anywhere=True)
    try:
        with open(path, "rb") as f:
            loaded = trimesh.load(f, file_type=fmt, resolver=resolver, process=False, maintain_order=True)
    except Exception as e:  # trimesh raises many types for corrupt files
        raise MeshRejected("unreadable", f"{type(e).__name__}: {str(e)[:200]}") from None
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        if not geoms:
            raise MeshRejected("empty", "no triangle geometry in the file")
        loaded = trimesh.util.concatenate(geoms)
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshRejected("no faces", f"loaded as {type(loaded).__name__}")
    if textures and not _texture_image(loaded.visual):  # found, yet not applied
        warnings.append(ItemWarning("default material", "its texture could not be read"))
    return loaded, fmt, warnings


def _texture_image(visual) -> bool:
    """Whether trimesh loaded a texture image (it keeps UVs with no image when it cannot)."""
    material = getattr(visual, "material", None) if getattr(visual, "kind", None) == "texture" else None
    return any(getattr(material, a, None) is not None for a in ("image", "baseColorTexture"))


def _vertex_colors(mesh) -> np.ndarray:
    try:
        visual = mesh.visual
        if visual.kind == "texture":
            visual = visual.to_color()
        colors = np.asarray(visual.vertex_colors, dtype=np.uint8)
        if colors.shape == (len(mesh.vertices), 4):
            return colors
    except Exception:  # untextured or odd visuals: fall back to grey
        pass
    return np.tile(np.array([180, 180, 180, 255], np.uint8), (len(mesh.vertices), 1))


def to_z_up(mesh, fmt: str, up_axis: str = "auto"):
    """The mesh turned so that its up axis is +z, the object frame's up (image-up in the
    renders): ``up_axis`` ``y`` or ``z``, or ``auto`` for the format's usual one (:data:`FORMAT_UP`)."""
    if (FORMAT_UP.get(fmt, "z") if up_axis == "auto" else up_axis) == "y":
        mesh = mesh.copy()
        mesh.apply_transform(_Y_UP_TO_Z_UP)  # (x, y, z) -> (x, -z, y): +y becomes +z
    return mesh


def clean(mesh, limits: MeshFilter = MeshFilter()) -> CleanMesh:
    """Geometric filtering and normalisation into the unit cube, or :class:`MeshRejected`."""
    import trimesh

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0 or len(vertices) == 0:
        raise MeshRejected("empty", "no faces")
    if len(faces) > limits.max_faces:
        raise MeshRejected("too many faces", f"{len(faces)} > budget {limits.max_faces}")
    if not np.isfinite(vertices).all():
        raise MeshRejected("non-finite vertices", f"{int((~np.isfinite(vertices)).any(1).sum())} vertices")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshRejected("unreadable", "face indices out of range")
    colors = _vertex_colors(mesh)
    lo, hi = vertices.min(0), vertices.max(0)
    extent = hi - lo
    if extent.max() <= 0:
        raise MeshRejected("degenerate", "all vertices coincide")
    if extent.min() / extent.max() < limits.min_extent_ratio:
        raise MeshRejected("flat", f"extents {np.round(extent / extent.max(), 5).tolist()}")
    vertices = (vertices - (lo + hi) / 2) / extent.max()
    work = trimesh.Trimesh(vertices, faces, process=False)
    areas = work.area_faces
    keep = areas > limits.min_face_area
    if not keep.any():
        raise MeshRejected("degenerate", "every face has zero area")
    work.update_faces(keep)
    work.remove_unreferenced_vertices()
    colors = colors[np.unique(faces[keep])] if len(colors) == len(vertices) else colors
    # Textured files split vertices at UV seams: merge by position before judging topology.
    merged = work.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    # repair=False: trimesh would otherwise fill holes and call an open surface closed.
    pieces = merged.split(only_watertight=False, repair=False)
    if len(pieces) > limits.max_components:
        raise MeshRejected("fragmented", f"{len(pieces)} components > {limits.max_components}")
    share = max(p.area for p in pieces) / merged.area
    if share < limits.min_main_component_share:
        raise MeshRejected("fragmented", f"largest component holds {share:.0%} of the surface")
    watertight = all(p.is_watertight for p in pieces)
    return CleanMesh(work.vertices.astype(np.float32), work.faces.astype(np.int32), colors.astype(np.uint8), watertight)


# -- occupancy ------------------------------------------------------------------------------


def occupancy(mesh: CleanMesh, resolution: int, seed: int = 0) -> np.ndarray:
    """bool[res, res, res] over the unit cube, indexed (x, y, z): cells the surface passes
    through, plus every cell whose centre is inside when the mesh is closed."""
    import trimesh

    res = resolution
    grid = np.zeros((res, res, res), dtype=bool)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    count = int(max(20_000, tm.area * res * res * 12))
    points, _ = trimesh.sample.sample_surface(tm, count, seed=seed)
    idx = np.clip(np.floor((points + 0.5) * res).astype(int), 0, res - 1)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    grid[tuple(np.clip(np.floor((mesh.vertices + 0.5) * res).astype(int), 0, res - 1).T)] = True
    if mesh.watertight:
        grid |= _inside_by_column_parity(mesh.vertices.astype(np.float64), mesh.faces, res)
    return grid


def _inside_by_column_parity(vertices: np.ndarray, faces: np.ndarray, res: int) -> np.ndarray:
    """Cell centres inside a closed mesh: cast one ray per (x, y) column along +z and count
    surface crossings below each centre (odd = inside). Fully vectorised over triangles."""
    tri = vertices[faces]  # [F, 3, 3]
    # Tiny irrational offset: column rays never pass exactly through an edge or a vertex.
    off = np.array([1e-7 * math.sqrt(2), 1e-7 * math.sqrt(3)])
    to_index = lambda v: (v + 0.5) * res - 0.5  # noqa: E731  coordinate -> cell index
    lo = np.ceil(to_index(tri[:, :, :2].min(1) - off)).astype(int).clip(0, res - 1)
    hi = np.floor(to_index(tri[:, :, :2].max(1) - off)).astype(int).clip(-1, res - 1)
    span = (hi - lo + 1).clip(0)
    counts = span[:, 0] * span[:, 1]
    if counts.sum() == 0:
        return np.zeros((res, res, res), dtype=bool)
    t = np.repeat(np.arange(len(tri)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    i = lo[t, 0] + local // span[t, 1]
    j = lo[t, 1] + local % span[t, 1]
    px = -0.5 + (i + 0.5) / res + off[0]
    py = -0.5 + (j + 0.5) / res + off[1]
    a, b, c = tri[t, 0], tri[t, 1], tri[t, 2]
    det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = np.abs(det) > 1e-18
    det = np.where(ok, det, 1.0)
    w0 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / det
    w1 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / det
    w2 = 1 - w0 - w1
    hit = ok & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    z = w0 * a[:, 2] + w1 * b[:, 2] + w2 * c[:, 2]
    i, j, z = i[hit], j[hit], z[hit]
    # Crossing at height z flips parity for every cell centre above it.
    first_above = np.clip(np.ceil(to_index(z)).astype(int), 0, res)
    flips = np.zeros((res, res, res + 1), dtype=np.int32)
    np.add.at(flips, (i, j, first_above), 1)
    return (np.cumsum(flips, axis=2)[:, :, :res] % 2).astype(bool)


# -- procedural generator -------------------------------------------------------------------


def _superquadric(rng):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    d = sphere.vertices
    a = rng.uniform(0.5, 1.0, size=3)
    e1, e2 = rng.uniform(0.25, 1.8, size=2)
    f = (np.abs(d[:, 0] / a[0]) ** (2 / e2) + np.abs(d[:, 1] / a[1]) ** (2 / e2)) ** (e2 / e1) + np.abs(
        d[:, 2] / a[2]
    ) ** (2 / e1)
    # f is homogeneous of degree 2/e1: scaling a direction by f^(-e1/2) lands on the surface.
    return trimesh.Trimesh(d * f[:, None] ** (-e1 / 2), sphere.faces, process=False)


def _star_prism(rng):
    """An extruded star/gear polygon (star-shaped, so a fan from the centre triangulates it)."""
    import trimesh

    n = int(rng.integers(5, 13))
    k = 2 * n
    angle = np.linspace(0, 2 * np.pi, k, endpoint=False)
    radius = np.where(np.arange(k) % 2 == 0, 1.0, rng.uniform(0.35, 0.8))
    ring = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    height = rng.uniform(0.2, 1.2)
    bottom = np.c_[ring, np.zeros(k)]
    top = np.c_[ring * rng.uniform(0.6, 1.0), np.full(k, height)]  # a slight taper
    verts = np.vstack([bottom, top, [[0, 0, 0]], [[0, 0, height]]])
    cb, ct = 2 * k, 2 * k + 1
    faces = []
    for s in range(k):
        t = (s + 1) % k
        faces += [[s, t, k + t], [s, k + t, k + s], [cb, t, s], [ct, k + s, k + t]]
    return trimesh.Trimesh(verts, np.array(faces), process=False)


def _part(rng, kind: str):
    import trimesh

    if kind == "superquadric":
        return _superquadric(rng)
    if kind == "torus":
        major = rng.uniform(0.6, 1.0)
        return trimesh_torus(major, rng.uniform(0.15, 0.45) * major)
    if kind == "extrusion":
        return _star_prism(rng)
    if kind == "capsule":
        return trimesh.creation.capsule(height=rng.uniform(0.3, 1.5), radius=rng.uniform(0.2, 0.5), count=[24, 12])
    raise ValueError(kind)


def _colorize(mesh, rng) -> np.ndarray:
    """Vertex colours: a base hue with a pattern (stripes, two-tone, gradient or speckle)."""
    import colorsys

    v = mesh.vertices
    hue = rng.uniform()
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.9), rng.uniform(0.5, 0.95)))
    accent = np.array(
        colorsys.hsv_to_rgb((hue + rng.uniform(0.2, 0.8)) % 1, rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.95))
    )
    axis = rng.normal(size=3)
    s = v @ (axis / np.linalg.norm(axis))
    pattern = rng.choice(["stripes", "two-tone", "gradient", "speckle"])
    if pattern == "stripes":
        w = (np.sin(s * rng.uniform(8, 25)) > 0).astype(float)
    elif pattern == "two-tone":
        w = (s > np.median(s)).astype(float)
    elif pattern == "gradient":
        w = (s - s.min()) / max(np.ptp(s), 1e-9)
    else:
        w = (rng.uniform(size=len(v)) < 0.2).astype(float)
    rgb = base * (1 - w[:, None]) + accent * w[:, None]
    return np.c_[np.clip(rgb * 255, 0, 255), np.full(len(v), 255)].astype(np.uint8)


#: A quarter turn about x, y, z: parts of a composition stand along one of the body's axes.
_QUARTER_TURNS = (
    np.eye(3),
    np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]),
    np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]),
)


def _composition(rng, family: str):
    """The parts of a composed family, each in place: (kind, rotation, scale, offset) built."""
    if family == "compound":  # a body with one or two parts along its axes, e.g. a lamp or a robot
        parts = [_part(rng, str(rng.choice(["superquadric", "capsule", "extrusion", "torus"])))]
        for _ in range(int(rng.integers(1, 3))):
            part = _part(rng, str(rng.choice(["superquadric", "capsule", "extrusion", "torus"])))
            part.vertices = part.vertices @ _QUARTER_TURNS[int(rng.integers(4))].T * rng.uniform(0.3, 0.7)
            part.vertices += rng.uniform(-0.6, 0.6, size=3)
            parts.append(part)
        return parts
    if family == "stack":  # parts of shrinking width stacked along +z: a vase, bottle or lamp
        parts, z = [], 0.0
        for n in range(int(rng.integers(2, 4))):
            part = _part(rng, str(rng.choice(["superquadric", "capsule", "extrusion"])))
            part.vertices *= 1.0 if n == 0 else rng.uniform(0.35, 0.8)
            lo, hi = part.vertices[:, 2].min(), part.vertices[:, 2].max()
            part.vertices[:, 2] += z - lo - 0.05 * (hi - lo) * (n > 0)
            z = part.vertices[:, 2].max()
            parts.append(part)
        return parts
    if family == "handled":  # an upright body with a standing ring on its +x side: a mug, a kettle
        body = _part(rng, str(rng.choice(["capsule", "extrusion", "superquadric"])))
        handle = trimesh_torus(rng.uniform(0.3, 0.5), rng.uniform(0.06, 0.12))
        handle.vertices = handle.vertices @ _QUARTER_TURNS[1].T  # the ring stands in the xz plane
        centre = body.vertices.mean(0)
        handle.vertices += [body.vertices[:, 0].max(), centre[1], centre[2]]
        return [body, handle]
    raise ValueError(family)


def trimesh_torus(major: float, minor: float):
    import trimesh

    return trimesh.creation.torus(major, minor, major_sections=48, minor_sections=16)


def procedural_mesh(seed: int, index: int, families: tuple[str, ...] = PROCEDURAL_FAMILIES):
    """The ``index``-th mesh of a seeded procedural collection of ``families``, as (trimesh, family).

    Meshes come in a canonical frame, as a curated asset library's do: upright (+z up), parts
    along the body's axes, the longer horizontal extent along x. A randomly turned canonical
    frame would make the canonical shape unobservable: an image shows pose x frame, and no
    model can tell the two apart."""
    import trimesh

    rng = np.random.default_rng([seed, index, 3])
    family = families[index % len(families)]
    parts = _composition(rng, family) if family in ("compound", *REAL_WORLD_FAMILIES) else [_part(rng, family)]
    for part in parts:
        part.visual.vertex_colors = _colorize(part, rng)
    mesh: Any = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    extent = np.ptp(mesh.vertices, axis=0)
    if extent[1] > extent[0]:
        mesh.vertices = mesh.vertices @ _QUARTER_TURNS[3].T
    return mesh, family
