"""The registered model as an MLflow Model: ``mlflow.pyfunc.load_model("models:/sam3d@champion")``
gives a model whose ``predict`` turns images and object masks into shape and layout.

Input: a pandas DataFrame (or a list of dicts) with one row per object, columns ``image``
(an encoded image: PNG / JPEG bytes) and ``mask`` (an encoded image of the same size,
non-zero on the object). Output: a DataFrame with one row per object: ``occupancy`` (the
R³ occupancy grid flattened in x, y, z order, 0/1 over the unit cube), ``resolution`` (R),
``rotation`` (the 3x3 rotation, row-major), ``translation`` (3 floats) and ``scale``, the
pose mapping the unit-cube shape into the camera frame: p_cam = R (s p) + t. Parameter
``seed`` (default 0) picks the sample; the same seed gives the same answer.

The checkpoint travels as the model's artifact ``checkpoint``; the architecture, the preset
and the checkpoint's sha256 are in the model's metadata.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from PIL import Image

CHECKPOINT_ARTIFACT = "checkpoint"
OUTPUT_COLUMNS = ("occupancy", "resolution", "rotation", "translation", "scale")


def _decode(data: Any, what: str, row: int) -> np.ndarray:
    if isinstance(data, str):  # a JSON request carries bytes as base64
        import base64

        data = base64.b64decode(data)
    try:
        return np.asarray(Image.open(io.BytesIO(bytes(data))))
    except Exception as e:
        raise ValueError(f"row {row}: {what} is not a readable image ({type(e).__name__}: {e})") from None


class Sam3DPyfunc(PythonModel):
    """The sam3d geometry model behind MLflow's pyfunc interface (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from sam3d_model.checkpoint import load_model

        self.model = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

    # model_input has no type hint: MLflow would read one as the input schema; the signature is that
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        from sam3d_model.data import collate, condition_inputs

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = {"image", "mask"} - set(frame.columns)
        if missing:
            raise ValueError(f"input: missing column(s) {sorted(missing)}; give image and mask (encoded images)")
        conditions = []
        for i, (image, mask) in enumerate(zip(frame["image"], frame["mask"], strict=True)):
            rgb, m = _decode(image, "image", i), _decode(mask, "mask", i)
            rgb = np.repeat(rgb[..., None], 3, axis=-1) if rgb.ndim == 2 else rgb[..., :3]
            m = m if m.ndim == 2 else m[..., 0]
            crop, full = condition_inputs(self.model.cfg, rgb, m > 0, name=f"row {i}")
            conditions.append({"crop": crop, "full": full, "full_valid": torch.tensor(True)})
        if not conditions:
            return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
        with torch.no_grad():
            prediction = self.model.sample(collate(conditions), seed=int((params or {}).get("seed", 0)))
        rows = []
        for i in range(len(prediction)):
            item = prediction.item(i)
            rows.append(
                {
                    "occupancy": item["occupancy"].astype(np.int8).ravel().tolist(),
                    "resolution": int(item["occupancy"].shape[0]),
                    "rotation": item["rotation"].ravel().astype(float).tolist(),
                    "translation": item["translation"].astype(float).tolist(),
                    "scale": float(item["scale"]),
                }
            )
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def example_input(image_size: int = 64) -> pd.DataFrame:
    """A one-row input: a grey disc on a dark background and its mask (the input example)."""
    yy, xx = np.mgrid[:image_size, :image_size]
    disc = (yy - image_size / 2) ** 2 + (xx - image_size / 2) ** 2 < (image_size / 4) ** 2
    rgb = np.where(disc[..., None], 160, 30).astype(np.uint8).repeat(3, axis=-1)

    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    return pd.DataFrame({"image": [png(rgb)], "mask": [png(disc.astype(np.uint8) * 255)]})


def log_pyfunc(checkpoint: str | Path, metadata: dict[str, Any], name: str = "model") -> str:
    """Log ``checkpoint`` as an MLflow Model (pyfunc, signature, input example, ``metadata``)
    in the active run; returns the logged model's URI."""
    from mlflow.models import infer_signature

    from sam3d_model.checkpoint import load_model

    model = Sam3DPyfunc()
    model.model = load_model(checkpoint)
    example = example_input(model.model.cfg.image_size)
    signature = infer_signature(example, model.predict(None, example), params={"seed": 0})
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=Sam3DPyfunc(),
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=signature,
        input_example=example,
        metadata={"architecture": model.model.cfg.model_dump(mode="json"), **metadata},
        pip_requirements=[],  # the project's environment: it is installed where the model is used
    )
    return info.model_uri
