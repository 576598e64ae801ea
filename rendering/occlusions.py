"""Flying Occlusions (render-paste): an occluder in front of an occludee, composited onto
a natural photo, kept only when the occludee's visible fraction lies inside a band.

The camera is the world frame (identity extrinsics, OpenCV axes), so object poses in the
camera frame are their world poses. Layout sampling is pure (:func:`sample_layout`); the
visibility test and the final render run in a Blender worker (:func:`occlusion_job`):
per try, two cheap object-index renders (1 sample, no bounces) give the occludee's amodal
mask (occluder hidden) and its modal mask (both shown); an accepted layout is then
rendered properly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rendering.procedural_shapes import random_rotation
from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at, random_lights

OCCLUDER, OCCLUDEE = 1, 2
IDENTITY = np.eye(4).tolist()


@dataclass(frozen=True)
class Layout:
    occludee: SceneObject
    occluder: SceneObject


@dataclass(frozen=True)
class PoseRange:
    """How the occludee stands before the camera: upright (its +z towards image-up) seen from
    an elevation in ``elevation_deg`` at any azimuth, tipped by up to ``max_tilt_deg`` about a
    horizontal axis; a ``tumble_share`` of objects take any rotation at all."""

    elevation_deg: tuple[float, float] = (-10.0, 60.0)
    max_tilt_deg: float = 15.0
    tumble_share: float = 0.1


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def object_rotation(rng: np.random.Generator, pose: PoseRange) -> np.ndarray:
    """An object-to-camera rotation drawn from ``pose``."""
    if rng.uniform() < pose.tumble_share:
        return random_rotation(rng)
    elevation = math.radians(rng.uniform(*pose.elevation_deg))
    azimuth = rng.uniform(0, 2 * math.pi)
    eye = [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    view = np.asarray(look_at(eye))[:3, :3]  # the world (object) frame seen from that camera
    tilt = _axis_angle(np.array([*rng.normal(size=2), 0.0]), math.radians(rng.uniform(0, pose.max_tilt_deg)))
    return view @ tilt


def sample_layout(
    rng: np.random.Generator, occludee_mesh: str, occluder_mesh: str, fov_deg: float, pose: PoseRange = PoseRange()
) -> Layout:
    """Occludee 2.5-4.0 in front of the camera, somewhere in the central frustum, posed by
    ``pose``; occluder nearer, at any rotation, placed on the line of sight to a random point
    near the occludee's centre."""
    half = math.tan(math.radians(fov_deg) / 2)
    z_far = rng.uniform(2.5, 4.0)
    far_xy = rng.uniform(-0.4, 0.4, size=2) * half * z_far
    occludee_t = np.array([*far_xy, z_far])
    z_near = rng.uniform(1.4, z_far - 0.9)
    aim = occludee_t + np.array([*rng.uniform(-0.45, 0.45, size=2), 0.0])
    occluder_t = aim * (z_near / aim[2])  # on the ray from the camera through `aim`
    occludee = SceneObject(
        "occludee",
        occludee_mesh,
        object_rotation(rng, pose).tolist(),
        occludee_t.tolist(),
        float(rng.uniform(0.8, 1.3)),
        OCCLUDEE,
    )
    occluder = SceneObject(
        "occluder",
        occluder_mesh,
        random_rotation(rng).tolist(),
        occluder_t.tolist(),
        float(rng.uniform(0.4, 0.9)),
        OCCLUDER,
    )
    return Layout(occludee, occluder)


def _scene(
    layout: Layout, camera: Camera, *, occluder_visible: bool, settings: RenderSettings, lights=(), env: float = 0.5
) -> Scene:
    from dataclasses import replace

    return Scene(
        [camera],
        [layout.occludee, replace(layout.occluder, visible=occluder_visible)],
        list(lights),
        world_strength=env,
        settings=settings,
    )


def visible_fraction(layout: Layout, camera: Camera, out_dir: str, device: str = "CPU", render=None) -> dict:
    """Amodal and modal pixel counts of the occludee and their overlap, from two cheap
    object-index renders. ``render(scene, out_dir)`` defaults to this process's Blender."""
    return _visibility(*_index_masks(layout, camera, out_dir, device, render or _blender_render))


def _index_masks(layout: Layout, camera: Camera, out_dir: str, device: str, render) -> tuple[np.ndarray, np.ndarray]:
    """The object-index images (uint8[H, W]) of two cheap renders: occluder hidden (amodal),
    and both shown (modal)."""
    cheap = RenderSettings(device=device, samples=1, max_bounces=0, passes=("index",))
    masks = []
    for visible in (False, True):
        render(_scene(layout, camera, occluder_visible=visible, settings=cheap), out_dir)
        masks.append(np.load(f"{out_dir}/v000_index.npy"))
    return masks[0], masks[1]


def _visibility(amodal_index: np.ndarray, modal_index: np.ndarray) -> dict:
    amodal = amodal_index == OCCLUDEE
    modal = modal_index == OCCLUDEE
    occluder_on_occludee = amodal & (modal_index == OCCLUDER)
    n = int(amodal.sum())
    return {
        "amodal_px": n,
        "modal_px": int(modal.sum()),
        "overlap_px": int(occluder_on_occludee.sum()),
        "visible_fraction": float(modal.sum() / n) if n else 0.0,
    }


def _blender_render(scene: Scene, out_dir: str) -> list[dict]:
    from rendering import blender_backend

    return blender_backend.render(scene, out_dir)


def occlusion_job(
    occludee_mesh: str,
    occluder_mesh: str,
    seed: int,
    out_dir: str,
    *,
    resolution: int,
    samples: int,
    fov_deg: float,
    visible_band,
    max_tries: int,
    min_occludee_pixels: int,
    elevation_deg=(-10.0, 60.0),
    max_tilt_deg: float = 15.0,
    tumble_share: float = 0.1,
    device: str = "CPU",
    render=None,
) -> dict:
    """Worker entry point: try layouts until one is inside the band, then render it.

    Returns the accepted layout (or ``accepted: False`` with the tries spent), the
    measured visibility, and the files of the final render. ``render`` is for benchmarks
    (a fresh-process renderer); by default this process's Blender renders."""
    render = render or _blender_render
    rng = np.random.default_rng(seed)
    camera = Camera(intrinsics(fov_deg, resolution, resolution), IDENTITY, resolution, resolution)
    low, high = visible_band
    pose = PoseRange(tuple(elevation_deg), max_tilt_deg, tumble_share)
    rejected = {"out_of_frame": 0, "no_overlap": 0, "outside_band": 0}
    for tries in range(1, max_tries + 1):
        layout = sample_layout(rng, occludee_mesh, occluder_mesh, fov_deg, pose)
        amodal_index, modal_index = _index_masks(layout, camera, out_dir, device, render)
        vis = _visibility(amodal_index, modal_index)
        if vis["amodal_px"] < min_occludee_pixels:
            rejected["out_of_frame"] += 1
        elif vis["overlap_px"] == 0:
            rejected["no_overlap"] += 1
        elif not low <= vis["visible_fraction"] <= high:
            rejected["outside_band"] += 1
        else:
            lights, env = random_lights(rng)
            final = _scene(
                layout,
                camera,
                occluder_visible=True,
                lights=lights,
                env=env,
                settings=RenderSettings(device=device, samples=samples),
            )
            views = render(final, out_dir)
            # The accepted layout's amodal mask is its cheap render's: rendering it again costs
            # a fifth of a sample's renders and gives the same image.
            Path(f"{out_dir}/amodal").mkdir(parents=True, exist_ok=True)
            np.save(f"{out_dir}/amodal/v000_index.npy", amodal_index)
            return {
                "accepted": True,
                "tries": tries,
                "rejected": rejected,
                **vis,
                "occludee": _pose(layout.occludee),
                "occluder": _pose(layout.occluder),
                "K": camera.K,
                "files": views[0]["files"],
                "render_s": views[0]["render_s"],
                "lights": len(lights),
                "env_strength": env,
            }
    return {"accepted": False, "tries": max_tries, "rejected": rejected}


def _pose(obj: SceneObject) -> dict:
    return {"R": obj.rotation, "t": obj.translation, "s": obj.scale}


def composite(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Alpha-composite a rendered RGBA (uint8[H,W,4]) over an RGB background (uint8[H,W,3])."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * alpha + background.astype(np.float32) * (1 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def occlusion_sample(
    sample_id: str,
    result: dict,
    out_dir: str,
    background: np.ndarray,
    occludee_id: str,
    occluder_id: str,
    background_id: str,
    occ: bytes,
):
    """``(key, row, files)`` of one accepted layout (OCCLUSIONS contract)."""
    import io

    from PIL import Image

    from rendering.iso3do import _png

    out = Path(out_dir)
    rgba = np.asarray(Image.open(io.BytesIO((out / result["files"]["rgba"]).read_bytes())).convert("RGBA"))
    modal = np.load(out / result["files"]["index"]) == OCCLUDEE
    amodal = np.load(out / "amodal" / "v000_index.npy") == OCCLUDEE
    h, w = modal.shape
    row = {
        "sample_id": sample_id,
        "occludee_id": occludee_id,
        "occluder_id": occluder_id,
        "background_id": background_id,
        "width": w,
        "height": h,
        "K": np.ravel(result["K"]).tolist(),
        **{
            f"{name}_{k}": (np.ravel(result[name][k]).tolist() if k != "s" else result[name][k])
            for name in ("occludee", "occluder")
            for k in ("R", "t", "s")
        },
        "visible_fraction": float(modal.sum() / max(amodal.sum(), 1)),
        "amodal_pixels": int(amodal.sum()),
        "modal_pixels": int(modal.sum()),
        "tries": result["tries"],
    }
    files = {
        "rgb.png": _png(composite(rgba, background)),
        "modal.png": _png(modal.astype(np.uint8) * 255),
        "amodal.png": _png(amodal.astype(np.uint8) * 255),
        "depth.npy": (out / result["files"]["depth"]).read_bytes(),
        "occ.npy": occ,
    }
    return sample_id, row, files


def measure_job(occludee: dict, occluder: dict, camera: dict, out_dir: str, device: str = "CPU") -> dict:
    """Worker entry point: the visibility of a given (not sampled) layout."""
    return visible_fraction(Layout(SceneObject(**occludee), SceneObject(**occluder)), Camera(**camera), out_dir, device)
