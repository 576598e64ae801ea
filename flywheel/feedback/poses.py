"""Object poses people give (an artist's delivery, an annotator's layout alignment): parsed
and checked in one place. Convention (flywheel.core.contracts): ``p_cam = R @ (s * p) + t``
for the normalised object's points ``p``, OpenCV camera axes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Pose:
    R: np.ndarray  # (3, 3) proper rotation
    t: np.ndarray  # (3,) in front of the camera
    s: float

    def as_dict(self) -> dict[str, Any]:
        return {"R": self.R.reshape(-1).tolist(), "t": self.t.tolist(), "s": self.s}


class PoseError(ValueError):
    """A pose that cannot be used; the message says why."""


def parse_pose(value: Any) -> Pose:
    """A pose from ``{"R": 3x3 or 9 numbers (row-major), "t": 3 numbers, "s": number}`` (a dict
    or its JSON text), checked: R a proper rotation (to 1e-3), t finite and in front of the
    camera (z > 0), s positive. Raises :class:`PoseError`."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise PoseError(f"not JSON ({e.msg})") from None
    if not isinstance(value, dict) or set(value) != {"R", "t", "s"}:
        raise PoseError('must be an object with exactly the keys "R", "t" and "s"')
    try:
        R = np.asarray(value["R"], float).reshape(3, 3)
        t = np.asarray(value["t"], float).reshape(3)
        s = float(value["s"])
    except (TypeError, ValueError):
        raise PoseError("R must be 3x3 numbers, t 3 numbers and s a number") from None
    if not (np.isfinite(R).all() and np.isfinite(t).all() and np.isfinite(s)):
        raise PoseError("non-finite values")
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
        raise PoseError("R is not a rotation (R^T R != I or det < 0)")
    if t[2] <= 0 or s <= 0:
        raise PoseError("t must be in front of the camera (z > 0) and s > 0")
    return Pose(R, t, s)
