"""The image pool of a round: (image, object mask) pairs that need 3D.

From a committed dataset (Flying-Occlusions composites, whose ground truth stays in that
dataset) or from a user manifest (``.jsonl`` or ``.csv``: ``image``, ``mask`` and an
optional ``object_id``; local paths, relative to the manifest, or ``s3://`` URIs). Each
item either becomes a sample of :data:`~flywheel.core.contracts.IMAGE_POOL` or is quarantined
with its reason: unreadable manifest row, missing or unreadable image or mask, file over
the size limit, mask of the wrong size, empty mask. The rest of the pool goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flywheel.core.codecs import encode_png
from flywheel.core.config import StoreConfig
from flywheel.core.datasets import Dataset
from flywheel.core.records import Rejected, Sample
from flywheel.core.store import ObjectNotFound, StoreError, read_uri
from rendering.segmenter import seed_of, segmenter_mask

Item = Sample | Rejected


def _sample(rgb: np.ndarray, mask: np.ndarray, source: str, object_id: str | None = None) -> Item:
    rgb_png, mask_png = encode_png(rgb), encode_png(mask.astype(np.uint8) * 255)
    oid = object_id or "obj-" + hashlib.sha256(rgb_png + mask_png).hexdigest()[:20]
    row = {
        "object_id": oid,
        "source": source,
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "mask_pixels": int(mask.sum()),
    }
    return Sample(oid, row, {"rgb.png": rgb_png, "mask.png": mask_png})


def check_pair(rgb: np.ndarray, mask: np.ndarray, name: str) -> tuple[str, str] | None:
    """(reason, detail) if the pair cannot be used, else None."""
    if mask.shape != rgb.shape[:2]:
        return ("mask size", f"{name}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {rgb.shape[1]}x{rgb.shape[0]}")
    if not mask.any():
        return ("empty mask", f"{name}: the object mask is empty")
    return None


def from_dataset(dataset: Dataset, mask_error: float = 0.0) -> Iterator[Item]:
    """Flying-Occlusions composites: the RGB composite and the occludee's visible mask, with
    a segmenter's errors when ``mask_error`` > 0 (the demo's "real" world)."""
    if dataset.spec.name != "occlusions":
        raise ValueError(f"image pool from dataset {dataset.spec.name!r}: only 'occlusions' can stand in for photos")
    for s in dataset.samples():
        rgb = np.asarray(Image.open(io.BytesIO(s["rgb.png"])).convert("RGB"))
        mask = np.asarray(Image.open(io.BytesIO(s["modal.png"]))) > 127
        mask = segmenter_mask(mask, mask_error, seed_of(s["__key__"]))
        name = f"{dataset.ref}/{s['__key__']}"
        problem = check_pair(rgb, mask, name)
        yield Rejected(name, *problem) if problem else _sample(rgb, mask, name)


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    text = path.read_text()
    if path.suffix == ".csv":
        for i, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
            yield i, row, ""
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield i, None, f"not JSON: {e.msg}"
            continue
        yield i, row if isinstance(row, dict) else None, "" if isinstance(row, dict) else "not a JSON object"


def from_manifest(path: str | Path, store_config: StoreConfig, max_bytes: int) -> Iterator[Item]:
    """Items of a user manifest; every bad row is quarantined with its reason."""
    path = Path(path)
    for line, row, problem in _manifest_rows(path):
        name = f"{path.name}:{line}"
        if row is None or problem:
            yield Rejected(name, "malformed row", f"{name}: {problem or 'not a row'}")
            continue
        image, mask_uri = row.get("image"), row.get("mask")
        if not isinstance(image, str) or not isinstance(mask_uri, str) or not image or not mask_uri:
            yield Rejected(name, "malformed row", f"{name}: needs string fields 'image' and 'mask'")
            continue
        arrays = []
        for what, uri in (("image", image), ("mask", mask_uri)):
            try:
                data = read_uri(uri, store_config, base=path.parent, max_bytes=max_bytes)
                arrays.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB" if what == "image" else "L")))
            except (FileNotFoundError, ObjectNotFound):
                yield Rejected(name, f"missing {what}", f"{name}: {what} {uri} does not exist")
                break
            except ValueError as e:
                if "over the limit" in str(e):
                    yield Rejected(name, "file too large", f"{name}: {what} {uri}: {e}")
                else:
                    yield Rejected(name, f"unreadable {what}", f"{name}: {what} {uri}: {e}")
                break
            except (UnidentifiedImageError, OSError, StoreError) as e:
                yield Rejected(name, f"unreadable {what}", f"{name}: {what} {uri}: {type(e).__name__}: {e}")
                break
        if len(arrays) < 2:
            continue
        rgb, mask = arrays[0], arrays[1] > 127
        unusable = check_pair(rgb, mask, f"{name} ({image})")
        oid = row.get("object_id")
        yield Rejected(name, *unusable) if unusable else _sample(rgb, mask, image, str(oid) if oid else None)


def unique(items: Iterator[Item]) -> Iterator[Item]:
    """The items with every repeat of an earlier (image, mask) pair turned into a rejection."""
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Sample) and item.key in seen:
            item = Rejected(
                item.key, "duplicate", f"{item.row['source']}: same image and mask as an earlier item ({item.key})"
            )
        elif isinstance(item, Sample):
            seen.add(item.key)
        yield item
