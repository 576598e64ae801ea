"""From versioned datasets to training batches.

An *example* is one object as tensors (see :mod:`sam3d_model.interface` for the keys);
``collate`` stacks examples into a batch. Iso-3DO and Flying-Occlusions samples are
streamed from their committed shards (webdataset) and decoded here; :func:`batch_stream`
turns any example source into an endless, seeded, shuffled stream of batches (the same
seed gives the same batches, which is what exact resumption of training needs).
"""

from __future__ import annotations

import io
import random
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from flywheel.datasets import Dataset, decode_npy
from sam3d_model.config import ModelConfig

Example = dict[str, torch.Tensor]
CROP_MARGIN = 1.2  # the crop is the mask's bounding square, enlarged by this factor


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def pointmap(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Planar depth (H, W) + intrinsics -> camera-frame points (H, W, 3); zeros where depth is 0."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    return np.stack([x, y, depth], axis=-1).astype(np.float32)


def _resize(channels: np.ndarray, box: tuple[int, int, int, int], size: int, nearest: bool) -> np.ndarray:
    """Crop ``box`` (left, top, right, bottom; may leave the image, zero-filled) from each
    (H, W) float channel and resize to (size, size)."""
    out = []
    for ch in channels:
        img = Image.fromarray(ch.astype(np.float32), mode="F").crop(box)
        out.append(np.asarray(img.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR)))
    return np.stack(out)


def condition_inputs(cfg: ModelConfig, rgb: np.ndarray, mask: np.ndarray,
                     points: np.ndarray | None = None, name: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """RGB uint8 (H, W, 3), mask bool (H, W), optional point map (H, W, 3) ->
    (crop, full), each (C_in, S, S): RGB in [-1, 1], mask {0, 1}[, normalised xyz, valid]."""
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{rgb.shape[1]}x{rgb.shape[0]}")
    if not mask.any():
        raise ValueError(f"{name}: the object mask is empty")
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max(4.0, CROP_MARGIN * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2)
    crop_box = (int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))
    side = max(h, w)  # the full image is padded to a square so its aspect is kept
    full_box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)

    smooth = rgb[..., :3].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    sharp = [mask.astype(np.float32)]
    if cfg.use_pointmap:
        pts = np.zeros((h, w, 3), np.float32) if points is None else points
        mean, std = np.asarray(cfg.translation_mean, np.float32), np.asarray(cfg.translation_std, np.float32)
        valid = (pts[..., 2] > 0).astype(np.float32)
        sharp += list(((pts - mean) / std * valid[..., None]).transpose(2, 0, 1)) + [valid]
    elif points is not None:
        raise ValueError(f"{name}: a point map was given but the model config has use_pointmap=false")
    views = []
    for box in (crop_box, full_box):
        a = _resize(smooth, box, cfg.image_size, nearest=False)
        b = _resize(np.stack(sharp), box, cfg.image_size, nearest=True)
        views.append(torch.from_numpy(np.concatenate([a, b[:1], b[1:]])))
    return views[0], views[1]


def _mat(values, n: int) -> torch.Tensor:
    return torch.tensor(np.asarray(values, np.float32).reshape(n, n))


def _occupancy(cfg: ModelConfig, data: bytes, key: str) -> torch.Tensor:
    occ = decode_npy(data)
    if occ.shape != (cfg.resolution,) * 3:
        raise ValueError(f"{key}: occupancy grid is {occ.shape} but the model expects "
                         f"{(cfg.resolution,) * 3}; build the mesh library at occupancy_resolution "
                         f"{cfg.resolution} or choose a model config with resolution {occ.shape[0]}")
    return torch.from_numpy(occ.astype(np.float32))


def iso3do_example(cfg: ModelConfig, sample: dict, row: dict) -> Example:
    """An Iso-3DO view: the object's crop is the condition (pre-training ignores the full image)."""
    key = sample["__key__"]
    rgba = _png(sample["rgb.png"])
    mask = _png(sample["mask.png"]) > 127
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0 if rgba.shape[-1] == 4 else 1.0
    rgb = (rgba[..., :3] * alpha).astype(np.uint8)   # over black
    K = np.asarray(row["K"], np.float32).reshape(3, 3)
    points = pointmap(decode_npy(sample["depth.npy"]), K) if cfg.use_pointmap else None
    crop, full = condition_inputs(cfg, rgb, mask, points, name=key)
    return {"crop": crop, "full": full, "full_valid": torch.tensor(False),
            "occupancy": _occupancy(cfg, sample["occ.npy"], key),
            "rotation": _mat(row["R"], 3), "translation": torch.tensor(row["t"], dtype=torch.float32),
            "scale": torch.tensor(float(row["s"]))}


def occlusions_example(cfg: ModelConfig, sample: dict, row: dict) -> Example:
    """A Flying-Occlusions composite: the occludee's visible (modal) mask on the full photo."""
    key = sample["__key__"]
    rgb = _png(sample["rgb.png"])[..., :3]
    mask = _png(sample["modal.png"]) > 127
    K = np.asarray(row["K"], np.float32).reshape(3, 3)
    points = pointmap(decode_npy(sample["depth.npy"]), K) if cfg.use_pointmap else None
    crop, full = condition_inputs(cfg, rgb, mask, points, name=key)
    return {"crop": crop, "full": full, "full_valid": torch.tensor(True),
            "occupancy": _occupancy(cfg, sample["occ.npy"], key),
            "rotation": _mat(row["occludee_R"], 3),
            "translation": torch.tensor(row["occludee_t"], dtype=torch.float32),
            "scale": torch.tensor(float(row["occludee_s"]))}


def _photo_condition(cfg: ModelConfig, sample: dict) -> dict[str, torch.Tensor]:
    """An image-pool photo and its object mask (no depth: real images have none)."""
    key = sample["__key__"]
    crop, full = condition_inputs(cfg, _png(sample["rgb.png"])[..., :3], _png(sample["mask.png"]) > 127, name=key)
    return {"crop": crop, "full": full, "full_valid": torch.tensor(True)}


def sft_example(cfg: ModelConfig, sample: dict, row: dict) -> Example:
    """An accepted object: the annotators' winning candidate is the target."""
    return {**_photo_condition(cfg, sample), "occupancy": _occupancy(cfg, sample["occ.npy"], sample["__key__"]),
            "rotation": _mat(row["R"], 3), "translation": torch.tensor(row["t"], dtype=torch.float32),
            "scale": torch.tensor(float(row["s"]))}


def preference_example(cfg: ModelConfig, sample: dict, row: dict) -> Example:
    """A (winner, loser) pair of one photo, for flow-DPO."""
    key = sample["__key__"]
    return {**_photo_condition(cfg, sample), "winner": _occupancy(cfg, sample["winner.npy"], key),
            "loser": _occupancy(cfg, sample["loser.npy"], key)}


DECODERS: dict[str, Callable[[ModelConfig, dict, dict], Example]] = {
    "iso3do": iso3do_example, "occlusions": occlusions_example, "sft": sft_example,
    "preferences": preference_example}


def dataset_examples(cfg: ModelConfig, dataset: Dataset) -> Iterator[Example]:
    """Stream a committed dataset's samples as examples, in shard order."""
    try:
        decode = DECODERS[dataset.spec.name]
    except KeyError:
        raise ValueError(f"dataset {dataset.spec.name!r} has no training decoder (known: {', '.join(DECODERS)})") from None
    rows = {r["sample_key"]: r for r in dataset.manifest().to_pylist()}
    for sample in dataset.samples():
        yield decode(cfg, sample, rows[sample["__key__"]])


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def batch_stream(source: Callable[[], Iterable[Example]], batch_size: int, seed: int = 0,
                 shuffle_buffer: int = 512) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches: each epoch re-reads ``source()`` through a seeded shuffle buffer."""
    rng = random.Random(seed)
    buffer: list[Example] = []
    pending: list[Example] = []
    while True:
        produced = False
        for example in source():
            produced = True
            buffer.append(example)
            if len(buffer) >= shuffle_buffer:
                pending.append(buffer.pop(rng.randrange(len(buffer))))
            if len(pending) == batch_size:
                yield collate(pending)
                pending = []
        if not produced:
            raise ValueError("batch_stream: the example source is empty")
        rng.shuffle(buffer)
        while buffer:
            pending.append(buffer.pop())
            if len(pending) == batch_size:
                yield collate(pending)
                pending = []


def curriculum_stream(real: list[Example], synthetic: list[Example], shares: list[float], steps: int,
                      batch_size: int, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """SFT batches that mix synthetic replay into real (accepted) data: the steps are cut into
    ``len(shares)`` equal phases, and in phase i a batch holds ``round(shares[i] * B)``
    synthetic examples. Without real data every batch is synthetic, without synthetic data
    every batch is real. Seeded: the same arguments give the same batches."""
    if not real and not synthetic:
        raise ValueError("curriculum_stream: no examples at all")
    rng = random.Random(seed)
    for step in range(steps):
        share = shares[min(step * len(shares) // max(steps, 1), len(shares) - 1)]
        n_syn = batch_size if not real else 0 if not synthetic else round(share * batch_size)
        picked = [synthetic[rng.randrange(len(synthetic))] for _ in range(n_syn)]
        picked += [real[rng.randrange(len(real))] for _ in range(batch_size - n_syn)]
        yield collate(picked)


def cached_examples(cfg: ModelConfig, datasets: Iterable[Dataset]) -> list[Example]:
    """Decode small datasets once and keep them in memory (each epoch then costs nothing)."""
    return [e for d in datasets for e in dataset_examples(cfg, d)]
