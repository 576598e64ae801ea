"""Contact sheets of a dataset's first samples, logged to the active MLflow stage run."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np

from flywheel.core.codecs import decode_npy
from flywheel.core.datasets import Dataset
from flywheel.tracking.plots import image_sheet, mesh_sheet, occupancy_sheet

SHEET_SIZE = 32


def log_image_sheet(dataset: Dataset, filename: str, kind: str = "rgb") -> None:
    """``kind``: "rgb" (the samples' rgb.png), "mesh" (their mesh.npz, shaded) or
    "occupancy" (their occ.npy)."""
    from PIL import Image

    images: list = []  # images, grids or (vertices, faces, colors), by kind
    titles: list[str] = []
    for sample in dataset.samples():
        if kind == "rgb":
            images.append(np.asarray(Image.open(io.BytesIO(sample["rgb.png"]))))
        elif kind == "mesh":
            with np.load(io.BytesIO(sample["mesh.npz"])) as npz:
                images.append((npz["vertices"], npz["faces"], npz["colors"] if "colors" in npz else None))
        else:
            images.append(decode_npy(sample["occ.npy"]))
        titles.append(sample["__key__"][-22:])
        if len(images) >= SHEET_SIZE:
            break
    if not images:
        return
    draws: dict[str, Callable[..., Path]] = {"rgb": image_sheet, "mesh": mesh_sheet, "occupancy": occupancy_sheet}
    draw = draws[kind]
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(draw(images, titles, Path(tmp) / filename)))
