"""Byte codecs of sample files: ``.npy`` arrays and ``.png`` images."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image


def encode_npy(array: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> npt.NDArray[Any]:
    array: npt.NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    return array


def encode_png(array: npt.NDArray[Any]) -> bytes:
    """uint8 (H, W) or (H, W, C) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> npt.NDArray[Any]:
    return np.asarray(Image.open(io.BytesIO(data)))
