"""Iso-3DO: an isolated, centred mesh rendered from many viewpoints under random lighting.

:func:`iso3do_scene` (pure) describes the render; :func:`render_job` runs in a Blender
worker and applies it. The object sits at the world origin with identity rotation and
scale 1 (it is already normalised), so its pose in each camera frame is that camera's
extrinsics: R = R_wc, t = t_wc, s = 1.
"""

from __future__ import annotations

import numpy as np

from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at, random_lights, viewpoints

OBJECT_INDEX = 1


def iso3do_scene(
    mesh_path: str,
    rng: np.random.Generator,
    *,
    views: int,
    resolution: int,
    samples: int,
    fov_deg: float,
    camera_distance: float,
    elevation_deg=(-10.0, 60.0),
    device: str = "CPU",
) -> Scene:
    K = intrinsics(fov_deg, resolution, resolution)
    cameras = [
        Camera(K, look_at(eye), resolution, resolution)
        for eye in viewpoints(views, rng, camera_distance, tuple(elevation_deg))
    ]
    lights, env = random_lights(rng)
    obj = SceneObject("object", mesh_path, np.eye(3).tolist(), [0.0, 0.0, 0.0], 1.0, OBJECT_INDEX)
    return Scene(cameras, [obj], lights, world_strength=env, settings=RenderSettings(device=device, samples=samples))


def render_job(scene: dict, out_dir: str) -> list[dict]:
    """Worker entry point: render every camera of ``scene`` into ``out_dir``."""
    from rendering import blender_backend

    return blender_backend.render(Scene.from_dict(scene), out_dir)


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def view_samples(object_id: str, scene: Scene, views: list[dict], out_dir: str, occ: bytes):
    """``(key, row, files)`` per rendered view of one object (ISO3DO contract)."""
    from pathlib import Path

    from PIL import Image

    out = Path(out_dir)
    for view in views:
        camera = scene.cameras[view["view"]]
        index = np.load(out / view["files"]["index"])
        mask = index == OBJECT_INDEX
        R, t, s = scene.objects[0].pose_in_camera(camera)
        row = {
            "object_id": object_id,
            "view": view["view"],
            "width": camera.width,
            "height": camera.height,
            "K": np.ravel(camera.K).tolist(),
            "world_to_cam": np.ravel(camera.world_to_cam).tolist(),
            "R": R.ravel().tolist(),
            "t": t.tolist(),
            "s": s,
            "mask_pixels": int(mask.sum()),
            "num_lights": len(scene.lights),
            "env_strength": scene.world_strength,
            "samples": scene.settings.samples,
        }
        # Re-encoded from the pixels: Blender's PNGs carry a date and render times in their
        # metadata, which would make identical renders differ byte for byte.
        files = {
            "rgb.png": _png(np.asarray(Image.open(out / view["files"]["rgba"]).convert("RGBA"))),
            "mask.png": _png(mask.astype(np.uint8) * 255),
            "depth.npy": (out / view["files"]["depth"]).read_bytes(),
            "occ.npy": occ,
        }
        yield f"{object_id}-v{view['view']:03d}", row, files
