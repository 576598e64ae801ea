"""Training examples from the flywheel's committed datasets.

Each dataset kind that a training stage reads has a decoder from a stored sample and its
manifest row to an example (see :mod:`sam3d_model.interface` for the keys). Samples are
streamed from the committed shards (webdataset) and decoded here; training reads them
through :class:`ExampleStream`, which gives each data-parallel worker (and each of its
DataLoader workers) its own part of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
import torch.utils.data

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


def decoder(dataset: Dataset) -> Callable[..., Example]:
    """The decoder of ``dataset``'s kind, or one clear error."""
    try:
        return DECODERS[dataset.spec.name]
    except KeyError:
        raise ValueError(
            f"dataset {dataset.spec.name!r} has no training decoder (known: {', '.join(DECODERS)})"
        ) from None


class ExampleStream(torch.utils.data.IterableDataset):
    """The examples of committed datasets, one epoch per iteration, streamed from the store's
    shards and decoded on the way (in the DataLoader's workers when there are any).

    Reader ``rank`` of ``world`` data-parallel workers — and, under a DataLoader with k
    workers, each of them: reader ``rank * k + worker`` of ``world * k`` — reads only its part,
    so that together the readers see every sample once per epoch: whole shards (shard i to
    reader i mod readers; a reader opens only its own) when there are at least as many shards
    as readers, else every readers-th sample (each reader reads every shard, decodes its own
    samples). ``keep(row)`` leaves rows out (held-out pairs); ``options``: the decoder's own.

    ``cache_bytes``: a reader whose whole part decodes to at most this many bytes keeps it
    after its first complete epoch and replays it (in the same order) instead of reading the
    store again; beyond that budget nothing is kept, so memory does not grow with the data.
    The cache never changes what a reader yields."""

    def __init__(
        self,
        cfg: ModelConfig,
        datasets: Iterable[Dataset],
        *,
        rank: int = 0,
        world: int = 1,
        keep: Callable[[dict], bool] | None = None,
        cache_bytes: int = 0,
        **options: Any,
    ):
        self.cfg, self.datasets = cfg, list(datasets)
        if not 0 <= rank < world:
            raise ValueError(f"reader rank {rank} of {world}: the rank must be in [0, {world})")
        for dataset in self.datasets:
            decoder(dataset)
        self.rank, self.world, self.keep, self.cache_bytes, self.options = rank, world, keep, cache_bytes, options
        self._cache: list[Example] | None = None

    def count(self) -> int:
        """Rows of all readers' parts together (what one epoch of all readers yields)."""
        if self.keep is None:
            return sum(d.manifest().num_rows for d in self.datasets)
        return sum(1 for d in self.datasets for row in d.manifest().to_pylist() if self.keep(row))

    def __iter__(self) -> Iterator[Example]:
        if self._cache is not None:
            yield from self._cache
            return
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        cache: list[Example] | None = [] if self.cache_bytes > 0 else None
        size = 0
        for example in self._read(self.rank * workers + worker, self.world * workers):
            if cache is not None:
                size += sum(t.numel() * t.element_size() for t in example.values())
                if size <= self.cache_bytes:
                    cache.append(example)
                else:
                    cache = None
            yield example
        self._cache = cache

    def _read(self, reader: int, readers: int) -> Iterator[Example]:
        units = [(d, shard) for d in self.datasets for shard in d.shard_names()]
        by_shard = len(units) >= readers
        index = -1
        for u, (dataset, shard) in enumerate(units):
            if by_shard and u % readers != reader:
                continue
            manifest = dataset.manifest()
            rows = {r["sample_key"]: r for r in manifest.filter(pc.equal(manifest["shard"], shard)).to_pylist()}
            decode = decoder(dataset)
            for sample in dataset.samples(shards=[shard]):
                index += 1
                if not by_shard and index % readers != reader:
                    continue
                row = rows[sample["__key__"]]
                if self.keep is None or self.keep(row):
                    yield decode(self.cfg, sample, row, **self.options)


def dataset_examples(cfg: ModelConfig, dataset: Dataset) -> Iterator[Example]:
    """Stream a committed dataset's samples as examples, in shard order."""
    return (example for example, _ in examples_with_rows(cfg, dataset))


def examples_with_rows(cfg: ModelConfig, dataset: Dataset, **options: Any) -> Iterator[tuple[Example, dict]]:
    """Each example with its manifest row, in shard order (``options``: the decoder's own)."""
    decode = decoder(dataset)
    rows = {r["sample_key"]: r for r in dataset.manifest().to_pylist()}
    for sample in dataset.samples():
        row = rows[sample["__key__"]]
        yield decode(cfg, sample, row, **options), row


def cached_examples(cfg: ModelConfig, datasets: Iterable[Dataset]) -> list[Example]:
    """Decode small datasets once and keep them in memory (each epoch then costs nothing)."""
    return [e for d in datasets for e in dataset_examples(cfg, d)]
