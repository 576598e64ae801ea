"""Natural photos for render-paste: a folder, an ``s3://`` prefix, or by default the
photos that ship inside the scikit-image wheel (no download)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.core.config import StoreConfig

# Colour photos inside the scikit-image wheel itself (others need a download).
DEFAULT_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 64


@dataclass(frozen=True)
class Background:
    background_id: str
    pixels: np.ndarray  # uint8[H, W, 3]


def check_photo(name: str, data: bytes | np.ndarray) -> Background:
    """Decode and check one photo; ValueError names the photo and the reason."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, np.ndarray):
        array = data
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.mode in ("L", "LA", "1", "I", "I;16", "F"):
                    raise ValueError(f"background {name}: grey-scale image ({img.mode}); colour photos only")
                array = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"background {name}: unreadable image: {e}") from None
    if array.ndim != 3 or array.shape[2] < 3:
        raise ValueError(f"background {name}: grey-scale image; colour photos only")
    if array.dtype != np.uint8:
        raise ValueError(f"background {name}: {array.dtype} pixels; 8-bit photos only")
    if min(array.shape[:2]) < MIN_SIDE:
        raise ValueError(f"background {name}: {array.shape[1]}x{array.shape[0]} is smaller than {MIN_SIDE} px")
    return Background(name, np.ascontiguousarray(array[..., :3]))


def load_backgrounds(source: str | None, store_config: StoreConfig) -> tuple[list[Background], list[tuple[str, str]]]:
    """(accepted photos sorted by id, rejected (id, reason))."""
    accepted, rejected = [], []
    candidates: list[tuple[str, Callable[[], Any]]]  # (id, read): bytes, or an array for scikit-image's
    if source is None:
        import skimage.data

        candidates = [(f"skimage:{n}", getattr(skimage.data, n)) for n in DEFAULT_PHOTOS]
    elif source.startswith("s3://"):
        from flywheel.core.store import S3Store

        store = S3Store(source.rstrip("/"), store_config)
        candidates = [
            (store.uri(o.key), partial(store.get_bytes, o.key))
            for o in store.list("")
            if o.key.lower().endswith(IMAGE_SUFFIXES)
        ]
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"background source {source!r}: not a folder or s3:// prefix")
        candidates = [(str(p), p.read_bytes) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    for name, read in candidates:
        try:
            accepted.append(check_photo(name, read()))
        except ValueError as e:
            rejected.append((name, str(e)))
        except Exception as e:  # unreadable for any other reason: still named, still counted
            rejected.append((name, f"background {name}: unreadable: {type(e).__name__}: {e}"))
    return sorted(accepted, key=lambda b: b.background_id), rejected


def crop(background: Background, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop resized to ``size`` x ``size``."""
    from PIL import Image

    h, w = background.pixels.shape[:2]
    side = int(rng.uniform(0.5, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    tile = Image.fromarray(background.pixels[y : y + side, x : x + side])
    return np.asarray(tile.resize((size, size), Image.Resampling.BILINEAR))
