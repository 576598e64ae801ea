"""A render scene described as plain data, and the sampling logic that makes one.

Nothing here imports Blender: a :class:`Scene` is built and tested with numpy alone, then
sent (as JSON) to a Blender worker whose backend (``rendering/blender_backend.py``) only
applies it. Same idea as Kubric: the scene is data, Blender is a backend.

Conventions (flywheel/contracts.py): cameras are OpenCV cameras (x right, y down, z
forward) given by intrinsics ``K`` (3x3, pixels) and a 4x4 world->camera matrix; an
object's world pose maps its normalised points by p_world = R @ (s * p) + t.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# OpenCV camera axes -> Blender camera axes (Blender cameras look down -z with y up).
OPENCV_TO_BLENDER = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Camera:
    K: list  # 3x3 intrinsics, pixels; principal point at the image centre
    world_to_cam: list  # 4x4, OpenCV convention
    width: int
    height: int

    @property
    def fx(self) -> float:
        return float(self.K[0][0])

    def blender_matrix_world(self) -> np.ndarray:
        """Blender's camera.matrix_world for this camera (the one place for this conversion)."""
        return np.linalg.inv(OPENCV_TO_BLENDER @ np.asarray(self.world_to_cam))

    def project(self, points_world: np.ndarray) -> np.ndarray:
        """Pixel coordinates (u, v) of world points, float[N, 2]; v grows downwards."""
        w2c = np.asarray(self.world_to_cam)
        cam = points_world @ w2c[:3, :3].T + w2c[:3, 3]
        uvw = cam @ np.asarray(self.K).T
        return uvw[:, :2] / uvw[:, 2:3]


@dataclass(frozen=True)
class Light:
    kind: str  # POINT, SUN, AREA or SPOT
    location: list  # world, metres; lights aim at the origin
    energy: float  # W for point/area/spot, W/m^2 (strength) for sun
    color: list  # linear RGB in [0, 1]
    size: float = 0.5  # soft-shadow radius / area side


@dataclass(frozen=True)
class SceneObject:
    name: str
    mesh_path: str  # .npz with vertices float32[V,3], faces int32[F,3], colors uint8[V,4]
    rotation: list  # 3x3 world rotation R
    translation: list  # world translation t
    scale: float  # uniform scale s
    pass_index: int  # object-index pass value (1..255)
    visible: bool = True

    def pose_in_camera(self, camera: Camera) -> tuple[np.ndarray, np.ndarray, float]:
        """(R, t, s) of this object in the camera frame: p_cam = R @ (s * p) + t."""
        w2c = np.asarray(camera.world_to_cam)
        r = w2c[:3, :3] @ np.asarray(self.rotation)
        t = w2c[:3, :3] @ np.asarray(self.translation) + w2c[:3, 3]
        return r, t, float(self.scale)


@dataclass(frozen=True)
class RenderSettings:
    engine: str = "CYCLES"
    device: str = "CPU"  # CPU or GPU (Cycles picks CUDA/OptiX/HIP devices)
    samples: int = 16
    max_bounces: int = 4
    denoise: bool = False
    passes: tuple = ("rgba", "depth", "index")


@dataclass(frozen=True)
class Scene:
    cameras: list
    objects: list
    lights: list
    world_strength: float = 0.3
    world_color: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    settings: RenderSettings = RenderSettings()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            cameras=[Camera(**c) for c in d["cameras"]],
            objects=[SceneObject(**o) for o in d["objects"]],
            lights=[Light(**lt) for lt in d["lights"]],
            world_strength=d["world_strength"],
            world_color=d["world_color"],
            settings=RenderSettings(**{**d["settings"], "passes": tuple(d["settings"]["passes"])}),
        )


# -- sampling (pure) -------------------------------------------------------------------------


def intrinsics(fov_deg: float, width: int, height: int) -> list:
    """Pinhole intrinsics with a horizontal field of view, square pixels, centred."""
    fx = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return [[fx, 0.0, width / 2], [0.0, fx, height / 2], [0.0, 0.0, 1.0]]


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> list:
    """World->camera 4x4 (OpenCV) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    if abs(np.dot(z, up)) > 0.999:  # looking straight up/down: any perpendicular 'up' will do
        up = np.array([0.0, 1.0, 0.0])
    x = np.cross(z, up)  # right
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # down
    r = np.stack([x, y, z])  # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3] = r
    w2c[:3, 3] = -r @ eye
    return w2c.tolist()


def viewpoints(
    n: int, rng: np.random.Generator, radius: float, elevation_deg: tuple[float, float] = (-10.0, 60.0)
) -> np.ndarray:
    """``n`` camera positions spread evenly over the sphere's band of elevations.

    A Fibonacci lattice on the band (equal-area in z), rotated by a random azimuth, so
    the views cover the object evenly with no clumps, differently per object."""
    lo, hi = (math.sin(math.radians(e)) for e in elevation_deg)
    i = np.arange(n) + 0.5
    z = lo + (hi - lo) * i / n
    azimuth = i * math.pi * (3 - math.sqrt(5)) + rng.uniform(0, 2 * math.pi)
    r_xy = np.sqrt(1 - z**2)
    return radius * np.stack([r_xy * np.cos(azimuth), r_xy * np.sin(azimuth), z], axis=1)


def random_lights(rng: np.random.Generator, max_lights: int = 3) -> tuple[list[Light], float]:
    """Randomised lighting: 1..max_lights lights of random kind, energy and tint, and an
    environment strength. Energies are scaled so the object is neither black nor blown out."""
    lights = []
    for _ in range(int(rng.integers(1, max_lights + 1))):
        kind = str(rng.choice(["POINT", "SUN", "AREA", "SPOT"]))
        direction = rng.normal(size=3)
        direction[2] = abs(direction[2]) + 0.3  # mostly from above
        location = (direction / np.linalg.norm(direction) * rng.uniform(3.0, 6.0)).tolist()
        energy = float(rng.uniform(1.0, 4.0) if kind == "SUN" else rng.uniform(200.0, 900.0))
        tint = 1.0 - rng.uniform(0.0, 0.35, size=3)  # warm/cool whites, not saturated colours
        lights.append(Light(kind, location, energy, tint.tolist(), float(rng.uniform(0.2, 1.5))))
    return lights, float(rng.uniform(0.1, 0.8))
