"""Mesh library: procedural generator, geometric filters, bad input, occupancy targets."""

from __future__ import annotations

import io
import json
import struct
import typing

import numpy as np
import pytest
import trimesh

from flywheel.core.config import ProceduralFamily, StoreConfig
from flywheel.core.records import Rejected, Sample
from rendering.mesh_library import library_samples, procedural_items, source_items
from rendering.meshes import (
    PROCEDURAL_FAMILIES,
    REAL_WORLD_FAMILIES,
    CleanMesh,
    MeshFilter,
    MeshRejected,
    clean,
    load_mesh_file,
    occupancy,
    procedural_mesh,
)


def test_procedural_meshes_are_varied_closed_and_normalised():
    families = set()
    for i in range(10):
        mesh, family = procedural_mesh(0, i)
        families.add(family)
        c = clean(mesh)
        extent = c.vertices.max(0) - c.vertices.min(0)
        assert np.isclose(extent.max(), 1.0, atol=1e-5)
        assert np.allclose((c.vertices.max(0) + c.vertices.min(0)) / 2, 0, atol=1e-5)
        assert c.watertight, family
        assert len(np.unique(c.colors[:, :3], axis=0)) > 1  # coloured, not flat grey
    assert families == set(PROCEDURAL_FAMILIES)
    assert clean(procedural_mesh(0, 3)[0]).mesh_id == clean(procedural_mesh(0, 3)[0]).mesh_id
    assert clean(procedural_mesh(0, 3)[0]).mesh_id != clean(procedural_mesh(1, 3)[0]).mesh_id


def test_procedural_meshes_come_in_a_canonical_frame():
    """Upright, the longer horizontal extent along x: shape and pose are separable."""
    every = PROCEDURAL_FAMILIES + REAL_WORLD_FAMILIES
    assert set(every) == set(typing.get_args(ProceduralFamily))
    seen = set()
    for i in range(3 * len(every)):
        mesh, family = procedural_mesh(4, i, every)
        seen.add(family)
        extent = np.ptp(mesh.vertices, axis=0)
        assert extent[0] >= extent[1], family
        c = clean(mesh)
        assert c.watertight, family
        if family in ("capsule", "stack"):  # standing along +z
            assert extent[2] > 0.9 * max(extent[0], extent[1]) or family == "stack", (family, extent)
        if family == "torus":  # lying flat
            assert extent[2] < extent[0]
    assert seen == set(every)
    stack, _ = procedural_mesh(4, every.index("stack"), every)
    assert np.ptp(stack.vertices[:, 2]) > np.ptp(stack.vertices[:, 0])  # parts stacked along +z are tall


def _grid_centres(res):
    c = -0.5 + (np.arange(res) + 0.5) / res
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)


@pytest.mark.parametrize("res", [16, 32, 64])
def test_occupancy_of_a_sphere_is_filled_and_matches_the_analytic_one(res):
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    c = clean(sphere)
    occ = occupancy(c, res)
    assert occ.shape == (res, res, res)
    r = np.linalg.norm(_grid_centres(res), axis=-1)
    h = 1 / res
    assert occ[r < 0.5 - h].all()  # every centre well inside is filled
    assert not occ[r > 0.5 + h].any()  # nothing well outside
    assert occ[res // 2, res // 2, res // 2]  # the very middle: filled, not just the surface


def test_occupancy_of_an_open_surface_is_surface_only():
    box = trimesh.creation.box(extents=(1, 1, 1))
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2], process=False)  # one side missing
    c = clean(open_box)
    assert not c.watertight
    occ = occupancy(c, 16)
    assert not occ[8, 8, 8] and occ[0, 8, 8]


def _write_obj(path, vertices, faces, header=""):
    lines = [header] + [f"v {x} {y} {z}" for x, y, z in vertices] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def bad_meshes(tmp_path):
    """One file per kind of bad input, next to one good mesh and its duplicate."""
    d = tmp_path / "meshes"
    d.mkdir()
    good = trimesh.creation.icosphere(subdivisions=2)
    good.export(d / "good.ply")
    good.export(d / "good_copy.stl")  # same geometry: a duplicate
    (d / "corrupt.glb").write_bytes(b"glTF" + struct.pack("<II", 2, 9999) + b"\x00" * 20)
    (d / "truncated.ply").write_bytes((d / "good.ply").read_bytes()[:300])
    (d / "empty.obj").write_text("")
    (d / "points_only.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    _write_obj(d / "nan_vertex.obj", [(0, 0, 0), (1, 0, float("nan")), (0, 1, 0), (0, 0, 1)], [(0, 1, 2), (0, 2, 3)])
    _write_obj(d / "flat.obj", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)], [(0, 1, 2), (1, 3, 2)])
    _write_obj(d / "degenerate.obj", [(0, 0, 0), (1, 1, 1), (2, 2, 2)], [(0, 1, 2)])
    cubes = [
        trimesh.creation.box(extents=(0.05,) * 3).apply_translation(np.random.default_rng(i).uniform(-1, 1, 3))
        for i in range(80)
    ]
    trimesh.util.concatenate(cubes).export(d / "fragmented.stl")
    trimesh.creation.icosphere(subdivisions=5).export(d / "too_many_faces.ply")  # 20480 faces > budget
    _write_obj(d / "escape.obj", good.vertices, good.faces, header="mtllib ../../secret.mtl")
    (d / "missing_texture.mtl").write_text("newmtl m\nmap_Kd nowhere.png\n")
    _write_obj(d / "missing_texture.obj", good.vertices, good.faces, header="mtllib missing_texture.mtl")
    (d / "windows_texture.mtl").write_text("newmtl m\nmap_Kd E:\\develop\\data\\table.png\n")  # pybullet's shape_sorter
    brick = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    _write_obj(d / "windows_texture.obj", brick.vertices, brick.faces, header="mtllib windows_texture.mtl")
    (d / "escape.gltf").write_text(
        json.dumps({"asset": {"version": "2.0"}, "buffers": [{"uri": "../outside.bin", "byteLength": 4}]})
    )
    (d / "url.gltf").write_text(
        json.dumps({"asset": {"version": "2.0"}, "buffers": [{"uri": "http://example.com/x.bin", "byteLength": 4}]})
    )
    return d


EXPECTED = {
    "corrupt.glb": "unreadable",
    "truncated.ply": "unreadable",
    "empty.obj": "empty",
    "points_only.obj": "no faces",
    "nan_vertex.obj": "non-finite vertices",
    "flat.obj": "flat",
    "degenerate.obj": "degenerate",
    "fragmented.stl": "fragmented",
    "too_many_faces.ply": "too many faces",
    "escape.obj": "unsafe reference",
    "escape.gltf": "unsafe reference",
    "url.gltf": "unsafe reference",
    "good_copy.stl": "duplicate",
}


def test_bad_meshes_are_each_quarantined_with_their_reason_and_good_ones_kept(bad_meshes, tmp_path):
    limits = MeshFilter(max_faces=10_000)
    out = list(library_samples(source_items(str(bad_meshes), StoreConfig(), limits, tmp_path), 16, limits))
    samples = [o for o in out if isinstance(o, Sample)]
    rejects = {o.item_id.rsplit("/", 1)[-1]: (o.reason, o.detail) for o in out if isinstance(o, Rejected)}
    kept = ["good.ply", "missing_texture.obj", "windows_texture.obj"]
    assert [s.row["source"].rsplit("/", 1)[-1] for s in samples] == kept
    assert {k: v[0] for k, v in rejects.items()} == EXPECTED
    assert "points outside" in rejects["escape.obj"][1]
    assert "good.ply" in rejects["good_copy.stl"][1]
    # a missing texture is not fatal: the mesh is kept, in the default material, with a warning
    assert samples[0].warnings == ()
    assert [(w.reason, "nowhere.png" in w.detail) for w in samples[1].warnings] == [("default material", True)]
    # a texture at an absolute Windows path (left by an exporter) is a missing texture, not a URL
    assert [(w.reason, "another machine" in w.detail) for w in samples[2].warnings] == [("default material", True)]
    assert len(out) == len(EXPECTED) + len(kept)  # every input accounted for


def test_file_size_limit_refuses_before_loading(tmp_path):
    f = tmp_path / "big.stl"
    trimesh.creation.icosphere(subdivisions=3).export(f)
    with pytest.raises(MeshRejected, match="file too large"):
        load_mesh_file(f, MeshFilter(max_file_bytes=1000))


def test_textured_obj_takes_its_colours_from_the_texture(tmp_path):
    from PIL import Image

    box = trimesh.creation.box()
    uv = np.c_[(box.vertices[:, 0] > 0) * 0.9 + 0.05, np.full(len(box.vertices), 0.5)]
    texture = np.zeros((8, 8, 3), np.uint8)
    texture[:, :4] = [255, 0, 0]
    texture[:, 4:] = [0, 0, 255]
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(texture))
    box.export(tmp_path / "box.obj")
    mesh, fmt, warnings = load_mesh_file(tmp_path / "box.obj")
    assert warnings == []
    c = clean(mesh)
    assert fmt == "obj"
    colors = {tuple(x) for x in c.colors[:, :3].tolist()}
    assert (255, 0, 0) in colors and (0, 0, 255) in colors


def test_npz_roundtrip():
    c = clean(procedural_mesh(2, 1)[0])
    back = CleanMesh.from_npz(c.to_npz())
    assert np.array_equal(back.vertices, c.vertices) and np.array_equal(back.colors, c.colors)


def test_procedural_items_feed_the_library():
    out = list(library_samples(procedural_items(0, 6), 16, MeshFilter()))
    assert all(isinstance(o, Sample) for o in out) and len(out) == 6
    assert [o.row["family"] for o in out] == list(PROCEDURAL_FAMILIES) + ["superquadric"]


def test_a_held_out_mesh_is_quarantined_even_as_a_near_copy(tmp_path):
    """A library built with held-out meshes refuses their surfaces — the exact mesh, or a copy
    whose round-off and face order differ — naming the held-out mesh; it keeps other meshes,
    and a mesh that is both held out and repeated is refused as held out."""
    ball = trimesh.creation.icosphere(subdivisions=3)
    rng = np.random.default_rng(1)
    near = trimesh.Trimesh(
        ball.vertices + rng.normal(0, 6e-8, ball.vertices.shape),
        ball.faces[rng.permutation(len(ball.faces))],
        process=False,
    )
    lib = tmp_path / "lib"
    lib.mkdir()
    ball.export(lib / "a_ball.obj")
    near.export(lib / "b_near_ball.glb")
    trimesh.creation.capsule(height=0.5, radius=0.4).export(lib / "c_capsule.ply")
    limits = MeshFilter()
    held_out = [(clean(ball), "procedural:999/3 (meshes@v1)")]
    out = list(library_samples(source_items(str(lib), StoreConfig(), limits, tmp_path / "w"), 16, limits, held_out))
    kept = [o.row["source"].rsplit("/", 1)[-1] for o in out if isinstance(o, Sample)]
    refused = {o.item_id.rsplit("/", 1)[-1]: o for o in out if isinstance(o, Rejected)}
    assert kept == ["c_capsule.ply"] and set(refused) == {"a_ball.obj", "b_near_ball.glb"}
    for r in refused.values():
        assert r.reason == "held out" and r.detail == "same geometry as held-out mesh procedural:999/3 (meshes@v1)"


def _textured_obj(folder):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    box = trimesh.creation.box()
    uv = np.c_[(box.vertices[:, 0] > 0) * 0.9 + 0.05, np.full(len(box.vertices), 0.5)]
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(np.full((4, 4, 3), 200, np.uint8)))
    box.export(folder / "box.obj")
    return folder


def test_meshes_from_an_s3_prefix_with_sidecar_files(seaweedfs, tmp_path):
    from conftest import BUCKET, s3_store_config

    local = tmp_path / "src"
    _textured_obj(local / "textured")
    trimesh.creation.icosphere(subdivisions=2).export(local / "sphere.glb")
    _write_obj(local / "bad.obj", [(0, 0, float("inf")), (1, 0, 0), (0, 1, 0)], [(0, 1, 2)])
    client = seaweedfs.client()
    for f in local.rglob("*"):
        if f.is_file():
            client.upload_file(str(f), BUCKET, f"mesh-src/{f.relative_to(local).as_posix()}")
    cfg = s3_store_config(seaweedfs, f"s3://{BUCKET}/mesh-src")
    limits = MeshFilter()
    out = list(library_samples(source_items(f"s3://{BUCKET}/mesh-src", cfg, limits, tmp_path / "work"), 16, limits))
    got = {
        o.item_id.rsplit("/", 1)[-1] if isinstance(o, Rejected) else o.row["source"].rsplit("/", 1)[-1]: "reject"
        if isinstance(o, Rejected)
        else "sample"
        for o in out
    }
    assert got == {"bad.obj": "reject", "box.obj": "sample", "sphere.glb": "sample"}
    box = next(o for o in out if isinstance(o, Sample) and o.row["source"].endswith("box.obj"))
    assert box.row["source"] == f"s3://{BUCKET}/mesh-src/textured/box.obj" and box.row["format"] == "obj"


def test_meshes_from_a_manifest(tmp_path):
    _textured_obj(tmp_path / "a")
    trimesh.creation.capsule().export(tmp_path / "cap.ply")
    (tmp_path / "list.txt").write_text("# meshes for round 3\na/box.obj\ncap.ply\nmissing.stl\n")
    (tmp_path / "list.jsonl").write_text(json.dumps({"uri": str(tmp_path / "cap.ply")}) + "\n")
    limits = MeshFilter()
    out = list(library_samples(source_items(str(tmp_path / "list.txt"), StoreConfig(), limits, tmp_path), 16, limits))
    assert [o.row["source"] if isinstance(o, Sample) else ("rejected", o.item_id) for o in out] == [
        "a/box.obj",
        "cap.ply",
        ("rejected", "missing.stl"),
    ]
    assert out[2].reason == "unreadable"
    jsonl = list(
        library_samples(source_items(str(tmp_path / "list.jsonl"), StoreConfig(), limits, tmp_path), 16, limits)
    )
    assert [type(o) for o in jsonl] == [Sample]
    with pytest.raises(FileNotFoundError, match="not a folder, manifest"):
        list(source_items(str(tmp_path / "nothing-here"), StoreConfig(), limits, tmp_path))


def test_entries_must_resolve_inside_the_source_root(tmp_path):
    """A manifest line that climbs out of the manifest's folder and a symlink in a folder that
    points outside it are refused; a texture that climbs out of the mesh's own folder but stays
    inside the source is fine."""
    outside = tmp_path / "outside"
    outside.mkdir()
    trimesh.creation.icosphere().export(outside / "secret.obj")
    lib = tmp_path / "lib"
    _textured_obj(lib / "box")
    mtl = next((lib / "box").glob("*.mtl"))
    texture = next(p for p in (lib / "box").iterdir() if p.suffix == ".png")
    texture.rename(lib / "shared.png")  # ../shared.png from the MTL: inside the source root
    mtl.write_text(mtl.read_text().replace(texture.name, "../shared.png"))
    (lib / "link.obj").symlink_to(outside / "secret.obj")
    (lib / "list.txt").write_text("box/box.obj\n../outside/secret.obj\n" + str(outside / "secret.obj") + "\n")
    limits = MeshFilter()

    from_folder = list(library_samples(source_items(str(lib), StoreConfig(), limits, tmp_path / "w1"), 16, limits))
    [box] = [o for o in from_folder if isinstance(o, Sample)]
    assert box.row["source"].endswith("box.obj") and box.warnings == ()
    colours = np.load(io.BytesIO(box.files["mesh.npz"]))["colors"][:, :3]
    assert not (colours == 180).all()  # the texture was applied (trimesh's own resolver refused ../shared.png)
    refused = {o.item_id.rsplit("/", 1)[-1]: o for o in from_folder if isinstance(o, Rejected)}
    assert set(refused) == {"link.obj"} and refused["link.obj"].reason == "outside the source"
    assert str(outside) in refused["link.obj"].detail

    listed = list(library_samples(source_items(str(lib / "list.txt"), StoreConfig(), limits, tmp_path), 16, limits))
    assert [type(o).__name__ for o in listed] == ["Sample", "Rejected", "Rejected"]
    assert {o.reason for o in listed[1:]} == {"outside the source"}


def test_source_contents_change_with_any_file_and_only_then(tmp_path):
    from rendering.mesh_library import source_contents

    lib = tmp_path / "lib"
    _textured_obj(lib / "box")
    cfg = StoreConfig()
    first = source_contents(str(lib), cfg)
    assert source_contents(str(lib), cfg) == first  # unchanged: the same version (cached)
    trimesh.creation.capsule().export(lib / "cap.ply")
    added = source_contents(str(lib), cfg)
    texture = next(p for p in (lib / "box").iterdir() if p.suffix == ".png")
    texture.write_bytes(texture.read_bytes() + b"\0")  # a sidecar changed
    changed = source_contents(str(lib), cfg)
    (lib / "cap.ply").unlink()
    removed = source_contents(str(lib), cfg)
    assert len({first, added, changed, removed}) == 4
    (lib / "list.txt").write_text("box/box.obj\n")
    manifest = source_contents(str(lib / "list.txt"), cfg)
    (lib / "box" / "box.obj").write_text((lib / "box" / "box.obj").read_text() + "\n")
    assert source_contents(str(lib / "list.txt"), cfg) != manifest  # a listed mesh changed
    with pytest.raises(FileNotFoundError, match="not a folder, manifest"):
        source_contents(str(tmp_path / "nothing-here"), cfg)


def test_fragment_and_flatness_thresholds_are_settings():
    """A shape whose largest piece holds a small share of the surface (a teddy bear's body
    with many small parts, say) or a thin plate: refused by default, accepted when the
    library's settings allow it."""
    body = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
    parts = [trimesh.creation.box(extents=(0.25,) * 3).apply_translation((0.6 * (i + 1), 0, 0)) for i in range(8)]
    bear = trimesh.util.concatenate([body, *parts])  # the body holds 0.54 / 3.54 = 15% of the surface
    with pytest.raises(MeshRejected, match="largest component"):
        clean(bear)
    assert clean(bear, MeshFilter(min_main_component_share=0.1)).faces.shape[0] == len(bear.faces)
    plate = trimesh.creation.box(extents=(1.0, 1.0, 5e-4))
    with pytest.raises(MeshRejected) as refused:
        clean(plate)
    assert refused.value.reason == "flat"
    assert len(clean(plate, MeshFilter(min_extent_ratio=1e-4)).faces) == len(plate.faces)


def test_the_same_asset_in_two_formats_is_one_mesh(tmp_path):
    """An asset exported twice (vertex order and float32 round-off differ, so the exact content
    ids differ) is kept once; the second copy is quarantined as a duplicate of the first."""
    lib = tmp_path / "lib"
    lib.mkdir()
    ball = trimesh.creation.icosphere(subdivisions=3)
    ball.export(lib / "a_ball.obj")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ball.faces))
    noisy = trimesh.Trimesh(ball.vertices + rng.normal(0, 6e-8, ball.vertices.shape), ball.faces[order], process=False)
    noisy.export(lib / "b_ball.glb")
    trimesh.creation.capsule(height=0.5, radius=0.4).export(lib / "c_other.ply")
    limits = MeshFilter()
    loaded = [clean(load_mesh_file(lib / n)[0]) for n in ("a_ball.obj", "b_ball.glb")]
    assert loaded[0].mesh_id != loaded[1].mesh_id and loaded[0].same_surface(loaded[1])  # round-off moved ids
    out = list(library_samples(source_items(str(lib), StoreConfig(), limits, tmp_path / "w"), 16, limits))
    kept = [o.row["source"].rsplit("/", 1)[-1] for o in out if isinstance(o, Sample)]
    assert kept == ["a_ball.obj", "c_other.ply"]
    dup = next(o for o in out if isinstance(o, Rejected))
    assert dup.item_id.endswith("b_ball.glb") and dup.reason == "duplicate" and "a_ball.obj" in dup.detail


def test_y_up_assets_stand_up(tmp_path):
    """A tall cylinder standing on +y, as a glTF (Y-up by specification) and as an OBJ (most
    exporters write Y-up), and standing on +z as an STL: each library mesh stands on +z, the
    object frame's up (image-up in the renders). A source can say its axis."""
    tall = trimesh.creation.cylinder(radius=0.2, height=2.0)  # along +z
    y_up = tall.copy().apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
    assert np.argmax(y_up.extents) == 1
    lib = tmp_path / "lib"
    lib.mkdir()
    y_up.export(lib / "a.glb")
    y_up.copy().apply_translation((0, 0, 5)).export(lib / "b.obj")  # moved: not a duplicate of a.glb
    trimesh.creation.box(extents=(0.3, 0.5, 2.0)).export(lib / "c.stl")  # a tall box, standing on +z

    def long_axes(up_axis: str) -> dict[str, int]:
        limits = MeshFilter()
        out = library_samples(source_items(str(lib), StoreConfig(), limits, tmp_path / up_axis, up_axis), 16, limits)
        return {
            o.row["source"].rsplit("/", 1)[-1]: int(
                np.argmax(np.ptp(np.load(io.BytesIO(o.files["mesh.npz"]))["vertices"], 0))
            )
            for o in out
            if isinstance(o, Sample)
        }

    assert long_axes("auto") == {"a.glb": 2, "c.stl": 2}  # b.obj: the same surface as a.glb, once upright
    assert long_axes("z") == {"a.glb": 1, "c.stl": 2}  # told "the files are z-up": left as they are
