"""Preview renders of candidates for annotators: the fast Blender path.

Workbench (no path tracing; ~0.07 s per 128² view on CPU, ENVIRONMENT.md), RGBA only, a
few fixed views around the object so candidates of one object are shown the same way.
"""

from __future__ import annotations

import numpy as np

from rendering.scene import Camera, RenderSettings, Scene, SceneObject, intrinsics, look_at

PREVIEW_FOV_DEG = 40.0
PREVIEW_DISTANCE = 2.2
PREVIEW_ELEVATION_DEG = 25.0


def preview_scene(mesh_path: str, views: int, resolution: int) -> Scene:
    """Cameras at ``views`` evenly spaced azimuths, slightly above the object."""
    K = intrinsics(PREVIEW_FOV_DEG, resolution, resolution)
    el = np.radians(PREVIEW_ELEVATION_DEG)
    cameras = []
    for i in range(views):
        az = 2 * np.pi * i / views + np.pi / 4
        eye = PREVIEW_DISTANCE * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        cameras.append(Camera(K, look_at(eye), resolution, resolution))
    obj = SceneObject("candidate", mesh_path, np.eye(3).tolist(), [0.0, 0.0, 0.0], 1.0, 1)
    return Scene(
        cameras,
        [obj],
        [],
        world_strength=1.0,
        settings=RenderSettings(engine="BLENDER_WORKBENCH", samples=1, passes=("rgba",)),
    )


def render_previews(scenes: list[dict], out_dir: str) -> list[list[str]]:
    """Worker entry point: render each scene into ``out_dir/<i>/``; the RGBA files per scene."""
    from rendering import blender_backend

    out = []
    for i, scene in enumerate(scenes):
        folder = f"{out_dir}/{i}"
        views = blender_backend.render(Scene.from_dict(scene), folder)
        out.append([f"{folder}/{v['files']['rgba']}" for v in views])
    return out
