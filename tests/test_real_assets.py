"""A real asset library no one here made: the object meshes robosuite 1.5.2 ships in its
PyPI wheel (OBJ + MTL + PNG textures, and STL copies of most; MuJoCo assets, +Z up), fetched
by the test set-up (scripts/setup.sh --test) into .cache/assets. The library must read them
textured, keep one mesh per asset across formats, and render them standing up."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from flywheel.core.config import StoreConfig
from flywheel.core.records import Rejected, Sample
from rendering.mesh_library import library_samples, source_items
from rendering.meshes import MeshFilter

REPO = Path(__file__).resolve().parent.parent
WHEEL = "robosuite-1.5.2-py3-none-any.whl"
FOLDERS = ("robosuite/models/assets/objects/meshes/", "robosuite/models/assets/textures/")
TALL = ("bottle", "can", "cereal", "milk")  # upright, these are taller than wide


@pytest.fixture(scope="module")
def robosuite_assets(tmp_path_factory) -> Path:
    """robosuite's assets folder as the wheel lays it out (objects/meshes, textures)."""
    wheel = REPO / ".cache" / "assets" / WHEEL
    if not wheel.exists():
        pytest.fail(f"{wheel} is missing: run `bash scripts/setup.sh --test` (the README's test command does)")
    root = tmp_path_factory.mktemp("robosuite")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root, [n for n in z.namelist() if n.startswith(FOLDERS)])
    return root / "robosuite" / "models" / "assets"


def library(source: Path, workdir: Path, up_axis: str) -> tuple[dict[str, Sample], dict[str, Rejected]]:
    limits = MeshFilter()
    kept, refused = {}, {}
    for item in library_samples(source_items(str(source), StoreConfig(), limits, workdir, up_axis), 16, limits):
        name = (item.row["source"] if isinstance(item, Sample) else item.item_id).rsplit("/", 1)[-1]
        (kept if isinstance(item, Sample) else refused)[name] = item
    return kept, refused


def extents(sample: Sample) -> np.ndarray:
    return np.ptp(np.load(io.BytesIO(sample.files["mesh.npz"]))["vertices"], axis=0)


def test_a_real_asset_library_reads_textured_once_per_asset(robosuite_assets, tmp_path):
    kept, refused = library(robosuite_assets, tmp_path / "w", up_axis="z")  # MuJoCo assets: +Z up
    objs = sorted(p.name for p in (robosuite_assets / "objects" / "meshes").glob("*.obj"))
    stls = sorted(p.name for p in (robosuite_assets / "objects" / "meshes").glob("*.stl"))
    assert sorted(kept) == objs and len(objs) == 10
    # every STL copy is the same asset as its OBJ (round-off, and quads split along other diagonals)
    assert sorted(refused) == stls and len(stls) == 7
    for name, rejected in refused.items():
        assert rejected.reason == "duplicate" and rejected.detail.endswith(name.replace(".stl", ".obj")), name
    # textures referenced as ../../textures/X.png resolve inside the source: coloured, no warning
    for name in ("bread.obj", "can.obj", "lemon.obj"):
        colours = np.load(io.BytesIO(kept[name].files["mesh.npz"]))["colors"][:, :3]
        assert len(np.unique(colours, axis=0)) > 1 and not (colours == 180).all(), name  # not the grey default
        assert not kept[name].warnings, name
    for name in TALL:
        assert np.argmax(extents(kept[f"{name}.obj"])) == 2, name  # standing on +z
    # read as OBJ's usual +Y up instead, the same bottle lies on its side: the source must say +Z
    auto, _ = library(robosuite_assets, tmp_path / "auto", up_axis="auto")
    assert np.argmax(extents(auto["bottle.obj"])) == 1 and np.argmax(extents(auto["bottle.stl"])) == 2


@pytest.mark.slow
def test_real_assets_render_upright(robosuite_assets, tmp_path):
    """Side views (camera level with the object) in Blender: the mask of every tall asset has
    its principal axis along image-up, also when the asset comes as a +Y-up glTF. The contact
    sheet is saved (to $TEST_ARTIFACTS too, when set) for people to look at."""
    from PIL import Image

    from flywheel.tracking.plots import image_sheet
    from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at
    from rendering.workers import BlenderWorker

    kept, _ = library(robosuite_assets, tmp_path / "w", up_axis="z")
    # the bottle again as a glTF written the glTF way (+Y up): read with the default up axis
    gltf = tmp_path / "gltf"
    gltf.mkdir()
    bottle = trimesh.load(robosuite_assets / "objects" / "meshes" / "bottle.stl", force="mesh")
    bottle.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0))).export(
        gltf / "bottle_y_up.glb"
    )
    from_gltf, _ = library(gltf, tmp_path / "g", up_axis="auto")
    assets = {name: s for name, s in kept.items()} | from_gltf

    res, scenes, names = 96, [], []
    for name, sample in sorted(assets.items()):
        path = tmp_path / f"{name}.npz"
        path.write_bytes(sample.files["mesh.npz"])
        az = np.radians(35)
        camera = Camera(intrinsics(40, res, res), look_at(2.4 * np.array([np.cos(az), np.sin(az), 0.0])), res, res)
        obj = SceneObject(name, str(path), np.eye(3).tolist(), [0.0, 0.0, 0.0], 1.0, 1)
        settings = RenderSettings(engine="BLENDER_WORKBENCH", samples=1, passes=("rgba",))
        scenes.append(Scene([camera], [obj], [], world_strength=1.0, settings=settings).to_dict())
        names.append(name)
    with BlenderWorker(tmp_path / "logs", cores=[0]) as worker:
        files = worker.run(
            "rendering.previews:render_previews", {"scenes": scenes, "out_dir": str(tmp_path / "r")}, 300
        )
    images = {n: np.asarray(Image.open(f[0]).convert("RGBA")) for n, f in zip(names, files)}

    def tilt_deg(rgba: np.ndarray) -> float:
        """Angle between the mask's principal axis and image-up."""
        ys, xs = np.nonzero(rgba[..., 3] > 127)
        _, vectors = np.linalg.eigh(np.cov(np.stack([xs, ys])))
        return float(np.degrees(np.arccos(abs(vectors[1, 1]))))  # largest eigenvalue last

    tall = [f"{n}.obj" for n in TALL] + ["bottle_y_up.glb"]
    tilts = {n: round(tilt_deg(images[n]), 1) for n in tall}
    assert all(t < 10 for t in tilts.values()), tilts
    sheet = image_sheet(
        [images[n] for n in names],
        [f"{n} ({tilts[n]}°)" if n in tilts else n for n in names],
        tmp_path / "sheet.png",
        6,
    )
    if os.environ.get("TEST_ARTIFACTS"):
        shutil.copy(sheet, Path(os.environ["TEST_ARTIFACTS"]) / "real-assets-upright.png")
