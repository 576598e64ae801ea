"""Training examples from the flywheel's committed datasets.

Each dataset kind that a training stage reads has a decoder from a stored sample and its
manifest row to an example (see :mod:`sam3d_model.interface` for the keys). Samples are
streamed from the committed shards (webdataset) and decoded here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from flywheel.core.codecs import decode_npy, decode_png
from flywheel.core.datasets import Dataset
from rendering.segmenter import seed_of, segmenter_mask
from sam3d_model.config import ModelConfig
from sam3d_model.data import Example, condition_inputs, pointmap


def _mat(values, n: int) -> torch.Tensor:
    return torch.tensor(np.asarray(values, np.float32).reshape(n, n))


def _occupancy(cfg: ModelConfig, data: bytes, key: str) -> torch.Tensor:
    occ = decode_npy(data)
    if occ.shape != (cfg.resolution,) * 3:
        raise ValueError(
            f"{key}: occupancy grid is {occ.shape} but the model expects "
            f"{(cfg.resolution,) * 3}; build the mesh library at occupancy_resolution "
            f"{cfg.resolution} or choose a model config with resolution {occ.shape[0]}"
        )
    return torch.from_numpy(occ.astype(np.float32))


def iso3do_example(cfg: ModelConfig, sample: dict, row: dict) -> Example:
    """An Iso-3DO view: the object's crop is the condition (pre-training ignores the full image)."""
    key = sample["__key__"]
    rgba = decode_png(sample["rgb.png"])
    mask = decode_png(sample["mask.png"]) > 127
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0 if rgba.shape[-1] == 4 else 1.0
    rgb = (rgba[..., :3] * alpha).astype(np.uint8)  # over black
    K = np.asarray(row["K"], np.float32).reshape(3, 3)
    points = pointmap(decode_npy(sample["depth.npy"]), K) if cfg.use_pointmap else None
    crop, full = condition_inputs(cfg, rgb, mask, points, name=key)
    return {
        "crop": crop,
        "full": full,
        "full_valid": torch.tensor(False),
        "occupancy": _occupancy(cfg, sample["occ.npy"], key),
        "rotation": _mat(row["R"], 3),
        "translation": torch.tensor(row["t"], dtype=torch.float32),
        "scale": torch.tensor(float(row["s"])),
    }


def occlusions_example(cfg: ModelConfig, sample: dict, row: dict, mask_error: float = 0.0) -> Example:
    """A Flying-Occlusions composite: the occludee's visible (modal) mask on the full photo,
    with a segmenter's errors when ``mask_error`` > 0 (the demo's "real" world)."""
    key = sample["__key__"]
    rgb = decode_png(sample["rgb.png"])[..., :3]
    mask = segmenter_mask(decode_png(sample["modal.png"]) > 127, mask_error, seed_of(key))
    K = np.asarray(row["K"], np.float32).reshape(3, 3)
    points = pointmap(decode_npy(sample["depth.npy"]), K) if cfg.use_pointmap else None
    crop, full = condition_inputs(cfg, rgb, mask, points, name=key)
    return {
        "crop": crop,
        "full": full,
        "full_valid": torch.tensor(True),
        "occupancy": _occupancy(cfg, sample["occ.npy"], key),
        "rotation": _mat(row["occludee_R"], 3),
        "translation": torch.tensor(row["occludee_t"], dtype=torch.float32),
        "scale": torch.tensor(float(row["occludee_s"])),
    }


def photo_condition(cfg: ModelConfig, sample: dict) -> dict[str, torch.Tensor]:
    """An image-pool photo and its object mask (no depth: real images have none)."""
    key = sample["__key__"]
    crop, full = condition_inputs(
        cfg, decode_png(sample["rgb.png"])[..., :3], decode_png(sample["mask.png"]) > 127, name=key
    )
    return {"crop": crop, "full": full, "full_valid": torch.tensor(True)}


def sft_example(cfg: ModelConfig, sample: dict, row: dict) -> Example:
    """An accepted object: the annotators' winning candidate is the target (an Art-3DO row:
    the artist's mesh and pose)."""
    return {
        **photo_condition(cfg, sample),
        "occupancy": _occupancy(cfg, sample["occ.npy"], sample["__key__"]),
        "rotation": _mat(row["R"], 3),
        "translation": torch.tensor(row["t"], dtype=torch.float32),
        "scale": torch.tensor(float(row["s"])),
    }


def preference_example(cfg: ModelConfig, sample: dict, row: dict) -> Example:
    """A (winner, loser) pair of one photo, for flow-DPO."""
    key = sample["__key__"]
    return {
        **photo_condition(cfg, sample),
        "winner": _occupancy(cfg, sample["winner.npy"], key),
        "loser": _occupancy(cfg, sample["loser.npy"], key),
    }


DECODERS: dict[str, Callable[..., Example]] = {
    "iso3do": iso3do_example,
    "occlusions": occlusions_example,
    "sft": sft_example,
    "art3do": sft_example,
    "preferences": preference_example,
}


def dataset_examples(cfg: ModelConfig, dataset: Dataset) -> Iterator[Example]:
    """Stream a committed dataset's samples as examples, in shard order."""
    return (example for example, _ in examples_with_rows(cfg, dataset))


def examples_with_rows(cfg: ModelConfig, dataset: Dataset, **options: Any) -> Iterator[tuple[Example, dict]]:
    """Each example with its manifest row, in shard order (``options``: the decoder's own)."""
    try:
        decode = DECODERS[dataset.spec.name]
    except KeyError:
        raise ValueError(
            f"dataset {dataset.spec.name!r} has no training decoder (known: {', '.join(DECODERS)})"
        ) from None
    rows = {r["sample_key"]: r for r in dataset.manifest().to_pylist()}
    for sample in dataset.samples():
        row = rows[sample["__key__"]]
        yield decode(cfg, sample, row, **options), row


def cached_examples(cfg: ModelConfig, datasets: Iterable[Dataset]) -> list[Example]:
    """Decode small datasets once and keep them in memory (each epoch then costs nothing)."""
    return [e for d in datasets for e in dataset_examples(cfg, d)]
