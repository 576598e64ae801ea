"""Training data streamed from the store (flywheel.learning.examples.ExampleStream): readers
— data-parallel ranks x DataLoader workers — split the samples so that together they see
each one once per epoch, whether there are more shards than readers or fewer; the cache
replays what the store gives; DataLoader workers decode in their own processes."""

from __future__ import annotations

import pytest
import torch
from conftest import Made

from flywheel.core.contracts import get_spec
from flywheel.core.datasets import Dataset, write_dataset
from flywheel.core.store import LocalStore, Store
from flywheel.learning.examples import ExampleStream
from flywheel.learning.stages import epochs
from sam3d_model.config import preset

CFG = preset("micro")


def _resharded(made: Made, store: Store, per_shard: int) -> Dataset:
    """The synthetic Iso-3DO version again, cut into shards of ``per_shard`` samples."""
    iso = made.dataset("iso3do")
    spec = get_spec("iso3do")
    rows = {r["sample_key"]: r for r in iso.manifest().to_pylist()}
    samples = [
        (s["__key__"], {k: rows[s["__key__"]][k] for k in spec.schema.names}, {e: s[e] for e in spec.files})
        for s in iso.samples()
    ]
    ref = write_dataset(store, spec, f"shards-of-{per_shard}", samples, shard_max_samples=per_shard)
    return Dataset(store, ref.name, ref.version)


def _identity(example: dict[str, torch.Tensor]) -> bytes:
    """What tells examples apart: their occupancy and pose."""
    return example["occupancy"].numpy().tobytes() + example["rotation"].numpy().tobytes()


@pytest.mark.parametrize("per_shard", [1, 4, 1000])  # more shards than readers, about as many, one shard
def test_readers_see_every_sample_once_per_epoch(synthetic: Made, store, per_shard):
    """On a local folder and on S3 (DataLoader workers open their own S3 client)."""
    dataset = _resharded(synthetic, store, per_shard)
    whole = [_identity(e) for e in ExampleStream(CFG, [dataset])]
    assert len(whole) == dataset.ref.num_rows == ExampleStream(CFG, [dataset]).count()
    for world in (2, 3):
        parts = [[_identity(e) for e in ExampleStream(CFG, [dataset], rank=r, world=world)] for r in range(world)]
        assert sorted(sum(parts, [])) == sorted(whole), f"{world} ranks"  # each sample once, none lost
        sizes = sorted(len(p) for p in parts)
        if len(dataset.shard_names()) < world:  # sample by sample: balanced
            assert sizes[-1] - sizes[0] <= 1
    # 2 ranks x 2 DataLoader workers: four readers, each in its own process
    seen = []
    for rank in (0, 1):
        stream = ExampleStream(CFG, [dataset], rank=rank, world=2)
        seen += [_identity(e) for e in epochs(stream, 2)()]
    assert sorted(seen) == sorted(whole)


def test_the_cache_replays_the_store_and_stays_within_its_budget(synthetic: Made, tmp_path):
    dataset = _resharded(synthetic, LocalStore(tmp_path / "store"), 3)
    uncached = ExampleStream(CFG, [dataset], rank=1, world=2)
    cached = ExampleStream(CFG, [dataset], rank=1, world=2, cache_bytes=2**30)
    first = [_identity(e) for e in cached]
    assert [_identity(e) for e in uncached] == first
    for shard in dataset.store.root.rglob("*.tar"):  # a second epoch no longer reads the store
        shard.unlink()
    assert [_identity(e) for e in cached] == first
    with pytest.raises(Exception, match="shard"):
        list(uncached)
    small = ExampleStream(CFG, [_resharded(synthetic, LocalStore(tmp_path / "again"), 3)], cache_bytes=1)
    assert len(list(small)) == dataset.ref.num_rows and small._cache is None  # over budget: nothing kept


def test_kept_rows_and_unknown_kinds(synthetic: Made):
    iso = synthetic.dataset("iso3do")
    first = iso.manifest().to_pylist()[0]["sample_key"]
    rest = ExampleStream(CFG, [iso], keep=lambda row: row["sample_key"] != first)
    assert rest.count() == len(list(rest)) == iso.ref.num_rows - 1
    with pytest.raises(ValueError, match="no training decoder"):
        ExampleStream(CFG, [synthetic.dataset("meshes")])
