"""Versioned datasets: commit protocol, readers, crashes, races, bad samples, corruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flywheel.core.codecs import decode_npy
from flywheel.core.contracts import SHAPES, DatasetSpec
from flywheel.core.datasets import (
    Dataset,
    DatasetCorrupt,
    DatasetNotCommitted,
    DatasetWriter,
    SampleError,
    collect_garbage,
    committed_ref,
    list_versions,
    read_marker,
    version_of,
    write_dataset,
)
from flywheel.core.store import LocalStore, S3Store
from rendering.procedural_shapes import shape_samples

HERE = Path(__file__).resolve().parent


def write_shapes(store, count=9, seed=0, shard=4, **kw):
    inputs = {"count": count, "seed": seed}
    version = version_of(SHAPES, inputs=inputs)
    return write_dataset(
        store, SHAPES, version, shape_samples(seed, count, 16), inputs=inputs, shard_max_samples=shard, **kw
    )


def test_write_then_read_manifest_and_samples(store):
    ref = write_shapes(store, count=9, shard=4)
    assert ref.num_rows == 9 and ref.name == "shapes"
    ds = Dataset(store, "shapes", ref.version)
    assert [s["samples"] for s in ds.marker["shards"]] == [4, 4, 1]  # rollover by count
    manifest = ds.manifest()
    assert manifest.schema == SHAPES.manifest_schema
    assert manifest.column("object_id").to_pylist() == [f"shape-0-{i:06d}" for i in range(9)]
    streamed = list(ds.samples())  # through webdataset, with the boto3 opener on S3
    assert [s["__key__"] for s in streamed] == manifest.column("sample_key").to_pylist()
    expected = {k: decode_npy(f["occ.npy"]) for k, _, f in shape_samples(0, 9, 16)}
    for sample in streamed:
        np.testing.assert_array_equal(decode_npy(sample["occ.npy"]), expected[sample["__key__"]])
    assert ds.verify() == []


def test_rollover_by_bytes(store):
    ref = write_shapes(store, count=5, shard=1000, shard_max_bytes=10_000)  # ~4.2 kB per sample
    assert [s["samples"] for s in Dataset(store, "shapes", ref.version).marker["shards"]] == [3, 2]


def test_same_inputs_same_version_and_rerun_does_nothing(store):
    first = write_shapes(store)
    marker = read_marker(store, "shapes", first.version)
    keys_before = [o.key for o in store.list("datasets")]
    again = write_shapes(store)
    assert again == first
    assert read_marker(store, "shapes", first.version) == marker
    assert [o.key for o in store.list("datasets")] == keys_before  # nothing written
    other = write_shapes(store, seed=1)
    assert other.version != first.version
    assert [m["version"] for m in list_versions(store, "shapes")] == [first.version, other.version]
    assert Dataset(store, "shapes").ref == other  # no version: the latest committed one


def test_version_depends_on_inputs_config_code_and_schema():
    base = version_of(SHAPES, inputs={"a": 1, "b": [1, 2]}, config={"x": 1})
    assert base == version_of(SHAPES, inputs={"b": [1, 2], "a": 1}, config={"x": 1})
    assert base != version_of(SHAPES, inputs={"a": 2, "b": [1, 2]}, config={"x": 1})
    assert base != version_of(SHAPES, inputs={"a": 1, "b": [1, 2]}, config={"x": 2})
    assert base != version_of(SHAPES, inputs={"a": 1, "b": [1, 2]}, config={"x": 1}, code_version="2")
    changed = DatasetSpec("shapes-v2", SHAPES.schema.append(pa.field("extra", pa.int8())), SHAPES.files)
    assert changed.fingerprint != SHAPES.fingerprint


def test_uncommitted_version_is_refused_and_failed_write_leaves_nothing(store):
    version = version_of(SHAPES, inputs={"boom": True})
    with pytest.raises(RuntimeError, match="producer failed"):
        with DatasetWriter(store, SHAPES, version, shard_max_samples=2) as writer:
            for i, (key, row, files) in enumerate(shape_samples(0, 6, 16)):
                writer.add(key, row, files)
                if i == 4:
                    raise RuntimeError("producer failed")
    assert committed_ref(store, "shapes", version) is None
    assert list(store.list(f"datasets/shapes/{version}")) == []  # the attempt was removed
    with pytest.raises(DatasetNotCommitted, match="not committed"):
        Dataset(store, "shapes", version)


def _proc_args(store, count, shard, signal_dir, mode):
    endpoint = store.config.endpoint_url if isinstance(store, S3Store) else "-"
    return [
        sys.executable,
        str(HERE / "dataset_writer_proc.py"),
        store.root_uri,
        endpoint,
        str(count),
        str(shard),
        str(signal_dir),
        mode,
    ]


def _wait_for(path: Path, proc: subprocess.Popen, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"writer exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_writer_killed_mid_version_leaves_nothing_visible_and_rerun_commits_same_digest(store, tmp_path):
    proc = subprocess.Popen(
        _proc_args(store, 12, 3, tmp_path, "slow"), cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for(tmp_path / "ready", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    version = version_of(SHAPES, inputs={"count": 12, "seed": 7})
    debris = [o.key for o in store.list(f"datasets/shapes/{version}")]
    assert any(k.endswith("shard-000000.tar") for k in debris)  # it did get somewhere
    assert not any(k.endswith("COMMITTED.json") for k in debris)
    with pytest.raises(DatasetNotCommitted, match="uncommitted"):
        Dataset(store, "shapes", version)
    assert list_versions(store, "shapes") == []

    rerun = subprocess.run(
        _proc_args(store, 12, 3, tmp_path, "fast"), cwd=HERE, capture_output=True, text=True, check=True
    )
    ref = json.loads(rerun.stdout)
    assert ref["version"] == version and ref["num_rows"] == 12
    # Same digest as an uninterrupted write of the same inputs somewhere else.
    clean_dir = tmp_path / "clean"
    clean = subprocess.run(
        _proc_args(_local(clean_dir), 12, 3, tmp_path, "fast"), cwd=HERE, capture_output=True, text=True, check=True
    )
    assert json.loads(clean.stdout)["digest"] == ref["digest"]
    assert Dataset(store, "shapes", version).verify() == []
    # The killed attempt is debris: the version's commit removed it; only the committed one is left.
    committed = Dataset(store, "shapes", version).marker["attempt"]
    assert store.children(f"datasets/shapes/{version}") == [committed]
    assert collect_garbage(store, "shapes", older_than_hours=0) == []
    assert Dataset(store, "shapes", version).verify() == []


def test_debris_of_killed_writers_is_removed_temporary_files_too(tmp_path):
    """An attempt folder holding only a killed upload's temporary file, or a complete shard and
    a temporary one: removed by gc once stale, kept while young (a writer may be running); of a
    committed version, removed once idle for 15 minutes; gc reports only what it removed."""
    import os
    import time

    store = _local(tmp_path)
    committed = write_dataset(store, SHAPES, "v1", shape_samples(0, 3, 16))

    def attempt(version: str, name: str, shard: bool, age_h: float):
        folder = tmp_path / f"datasets/shapes/{version}/{name}/shards"
        folder.mkdir(parents=True)
        files = [folder / ".tmp-0123456789abcdef-shard-000001.tar"]
        if shard:
            files.append(folder / "shard-000000.tar")
        for f in files:
            f.write_bytes(b"partial")
            os.utime(f, (time.time() - age_h * 3600,) * 2)
        return folder.parent

    young = attempt("v2", "attempt-young", shard=False, age_h=0.5)
    stale = attempt("v2", "attempt-stale", shard=False, age_h=7)
    killed = attempt(committed.version, "attempt-killed", shard=True, age_h=0.5)
    running = attempt(committed.version, "attempt-running", shard=True, age_h=0.05)  # a concurrent writer
    removed = collect_garbage(store, "shapes")
    assert sorted(removed) == [
        f"datasets/shapes/{committed.version}/attempt-killed",
        "datasets/shapes/v2/attempt-stale",
    ]
    assert young.exists() and running.exists() and not stale.exists() and not killed.exists()
    assert collect_garbage(store, "shapes") == []  # nothing left to remove: nothing reported
    for f in (running / "shards").iterdir():  # ... until it stops
        os.utime(f, (time.time() - 3600,) * 2)
    assert collect_garbage(store, "shapes") == [f"datasets/shapes/{committed.version}/attempt-running"]
    assert Dataset(store, "shapes", committed.version).verify() == []


def _local(path):
    from flywheel.core.store import LocalStore

    return LocalStore(path)


def test_two_concurrent_writers_one_commit_identical_content(store, tmp_path):
    procs = [
        subprocess.Popen(
            _proc_args(store, 7, 3, tmp_path, "race"),
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _wait_for(tmp_path / f"ready-{p.pid}", p)
    (tmp_path / "go").touch()  # both commit at once
    refs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        refs.append(json.loads(out))
    assert refs[0] == refs[1]
    version = refs[0]["version"]
    attempts = store.children(f"datasets/shapes/{version}")
    assert len(attempts) == 1  # the loser removed its own attempt
    assert read_marker(store, "shapes", version)["attempt"] == attempts[0]
    assert Dataset(store, "shapes", version).verify() == []


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda k, r, f: ("bad.key", r, f), "key must match"),
        (lambda k, r, f: (k, {x: v for x, v in r.items() if x != "family"}, f), r"missing \['family'\]"),
        (lambda k, r, f: (k, {**r, "extra": 1}, f), r"unexpected \['extra'\]"),
        (lambda k, r, f: (k, {**r, "resolution": "sixteen"}, f), "does not fit the schema"),
        (lambda k, r, f: (k, {**r, "object_id": None}, f), "does not fit the schema"),
        (lambda k, r, f: (k, r, {}), "differ from the contract"),
        (lambda k, r, f: (k, r, {"occ.npy": "text"}), "must be bytes"),
    ],
)
def test_bad_sample_is_refused_with_reason_and_writer_goes_on(tmp_path, mutate, reason):
    from flywheel.core.store import LocalStore

    store = LocalStore(tmp_path)
    samples = list(shape_samples(0, 3, 16))
    version = version_of(SHAPES, inputs={"t": reason})
    with DatasetWriter(store, SHAPES, version) as writer:
        writer.add(*samples[0])
        with pytest.raises(SampleError, match=reason) as err:
            writer.add(*mutate(*samples[1]))
        assert "sample" in str(err.value)
        writer.add(*samples[2])
    assert Dataset(store, "shapes", version).manifest().num_rows == 2


def test_duplicate_key_is_refused(tmp_path):
    from flywheel.core.store import LocalStore

    sample = next(shape_samples(0, 1, 16))
    with DatasetWriter(LocalStore(tmp_path), SHAPES, "v1") as writer:
        writer.add(*sample)
        with pytest.raises(SampleError, match="duplicate"):
            writer.add(*sample)


def test_verify_detects_truncated_shard_and_tampered_manifest(tmp_path):
    from flywheel.core.store import LocalStore

    store = LocalStore(tmp_path)
    ref = write_shapes(store, count=9, shard=4)
    ds = Dataset(store, "shapes", ref.version)
    shard = store.local_path(f"datasets/shapes/{ref.version}/{ds.marker['attempt']}/shards/shard-000001.tar")
    shard.write_bytes(shard.read_bytes()[:3000])
    assert ds.verify() == ["shard shard-000001.tar: checksum mismatch"]
    manifest = store.local_path(f"datasets/shapes/{ref.version}/{ds.marker['attempt']}/manifest.parquet")
    manifest.write_bytes(manifest.read_bytes() + b"x")
    with pytest.raises(DatasetCorrupt, match="manifest checksum"):
        Dataset(store, "shapes", ref.version).manifest()


def test_writer_checks_store_before_work(seaweedfs):
    from conftest import s3_store_config

    from flywheel.core.store import BucketNotFound

    cfg = s3_store_config(seaweedfs, "s3://bucket-that-is-missing/x")
    with pytest.raises(BucketNotFound):
        DatasetWriter(S3Store(cfg.root, cfg), SHAPES, "v1")


def test_same_bucket_name_on_two_servers_reads_from_the_right_one(seaweedfs, moto):
    from conftest import BUCKET, s3_store_config

    refs = {}
    stores = {}
    for server, count in ((seaweedfs, 3), (moto, 5)):
        root = f"s3://{BUCKET}/two-servers"  # same bucket and prefix, different endpoints
        stores[server.kind] = S3Store(root, s3_store_config(server, root))
        refs[server.kind] = write_shapes(stores[server.kind], count=count)
    for kind, store in stores.items():  # both openers registered before either is read
        ds = Dataset(store, "shapes", refs[kind].version)
        assert sum(1 for _ in ds.samples()) == refs[kind].num_rows


def test_wrong_credentials_write_nothing(seaweedfs):
    from conftest import BUCKET, s3_store_config

    from flywheel.core.store import StoreAuthError

    root = f"s3://{BUCKET}/wrong-creds"
    cfg = s3_store_config(seaweedfs, root)
    bad = S3Store(root, cfg, client=seaweedfs.client("intruder", "guess"))
    with pytest.raises(StoreAuthError, match="access denied"):
        write_shapes(bad, count=3)
    assert list(S3Store(root, cfg).list("")) == []


def test_sharding_changes_no_content_digest(tmp_path):
    """The same samples cut into shards of 2 or of 5 are the same content (one digest); a
    changed sample is not."""
    store = LocalStore(tmp_path / "store")
    samples = list(shape_samples(0, 5, 8))
    small = write_dataset(store, SHAPES, "small-shards", samples, shard_max_samples=2)
    large = write_dataset(store, SHAPES, "large-shards", samples, shard_max_samples=5)
    assert len(Dataset(store, "shapes", small.version).marker["shards"]) == 3
    assert small.digest == large.digest
    key, row, files = samples[0]
    changed = write_dataset(
        store, SHAPES, "changed", [(key, row, {**files, "occ.npy": files["occ.npy"] + b"x"}), *samples[1:]]
    )
    assert changed.digest != small.digest


def test_warnings_are_kept_in_the_marker_and_shown(tmp_path):
    """A sample accepted with a warning (a mesh in the default material, say) is counted in
    the commit marker with its reason, and `datasets show` prints it; a version without
    warnings has no such entry."""
    from flywheel.core.records import ItemWarning, Sample

    store = LocalStore(tmp_path / "store")
    samples = list(shape_samples(0, 2, 8))
    with DatasetWriter(store, SHAPES, "warned") as w:
        w.put(Sample(*samples[0]))
        w.put(Sample(*samples[1], warnings=(ItemWarning("default material", "texture 'wood.png' not found"),)))
    marker = Dataset(store, "shapes", "warned").marker
    assert marker["warnings"]["rows"] == 1 and marker["warnings"]["by_reason"] == {"default material": 1}
    assert marker["warnings"]["items"][0]["item_id"] == samples[1][0]
    plain = write_dataset(store, SHAPES, "plain", samples)
    assert "warnings" not in Dataset(store, "shapes", plain.version).marker
    assert plain.digest != Dataset(store, "shapes", "warned").ref.digest
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), "datasets", "show", "shapes@warned", "-n", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLYWHEEL__STORE__ROOT": str(tmp_path / "store")},
    )
    assert shown.returncode == 0, shown.stderr
    assert "warnings: 1 (default material: 1)" in shown.stdout and "wood.png" in shown.stdout
