"""From images and examples to training batches.

An *example* is one object as tensors (see :mod:`sam3d_model.interface` for the keys);
:func:`condition_inputs` makes the condition tensors of an (image, mask) pair, ``collate``
stacks examples into a batch, and :func:`batch_stream` turns any example source into an
endless, seeded, shuffled stream of batches (the same seed gives the same batches, which
is what exact resumption of training needs). Decoding stored datasets into examples is the
caller's business (``flywheel.learning.examples`` does it for the flywheel's datasets).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from sam3d_model.config import ModelConfig

Example = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]
CROP_MARGIN = 1.2  # the crop is the mask's bounding square, enlarged by this factor


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
        out.append(
            np.asarray(img.resize((size, size), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))
        )
    return np.stack(out)


def condition_inputs(
    cfg: ModelConfig, rgb: np.ndarray, mask: np.ndarray, points: np.ndarray | None = None, name: str = "image"
) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB uint8 (H, W, 3), mask bool (H, W), optional point map (H, W, 3) ->
    (crop, full), each (C_in, S, S): RGB in [-1, 1], mask {0, 1}[, normalised xyz, valid]."""
    if mask.shape != rgb.shape[:2]:
        raise ValueError(
            f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]}"
        )
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


def collate(examples: list[Example]) -> Batch:
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


#: one epoch of examples per call (a list's ``lambda: examples``, or a stream read from storage)
Source = Callable[[], Iterable[Example]]


def shuffled(source: Source, seed: int = 0, shuffle_buffer: int = 512) -> Iterator[Example]:
    """Endless examples: each epoch re-reads ``source()`` through a seeded shuffle buffer of
    ``shuffle_buffer`` examples (what is left at an epoch's end is shuffled and drained)."""
    rng = random.Random(seed)
    buffer: list[Example] = []
    while True:
        produced = False
        for example in source():
            produced = True
            buffer.append(example)
            if len(buffer) >= shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        if not produced:
            raise ValueError("the example source is empty")
        rng.shuffle(buffer)
        while buffer:
            yield buffer.pop()


def batch_stream(source: Source, batch_size: int, seed: int = 0, shuffle_buffer: int = 512) -> Iterator[Batch]:
    """Endless batches of :func:`shuffled` examples."""
    examples = shuffled(source, seed, shuffle_buffer)
    while True:
        yield collate([next(examples) for _ in range(batch_size)])


def curriculum_stream(
    real: Source | None,
    synthetic: Source | None,
    shares: list[float],
    steps: int,
    batch_size: int,
    seed: int = 0,
    artist: Source | None = None,
    artist_share: float = 0.0,
) -> Iterator[Batch]:
    """SFT batches that mix synthetic replay into real (accepted) data: the steps are cut into
    ``len(shares)`` equal phases, and in phase i a batch holds ``round(shares[i] * B)``
    synthetic examples. Without real data (None) every batch is synthetic, without synthetic
    data every batch is real. ``artist`` examples (artists' meshes) take
    ``round(artist_share * R)`` of a batch's R real places (all of them when there is no other
    real data). Each source is read as its own :func:`shuffled` stream, so every example of a
    source is drawn once before any is drawn again. Seeded: the same arguments give the same
    batches."""
    if real is None and synthetic is None and artist is None:
        raise ValueError("curriculum_stream: no examples at all")
    streams = {
        role: shuffled(source, seed + i)
        for i, (role, source) in enumerate((("real", real), ("synthetic", synthetic), ("artist", artist)))
        if source is not None
    }
    has_real = real is not None or artist is not None
    for step in range(steps):
        share = shares[min(step * len(shares) // max(steps, 1), len(shares) - 1)]
        n_syn = batch_size if not has_real else 0 if synthetic is None else round(share * batch_size)
        n_art = (
            0 if artist is None else batch_size - n_syn if real is None else round(artist_share * (batch_size - n_syn))
        )
        counts = {"synthetic": n_syn, "real": batch_size - n_syn - n_art, "artist": n_art}
        yield collate([next(streams[role]) for role, n in counts.items() for _ in range(n)])
