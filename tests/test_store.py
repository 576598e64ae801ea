"""The store contract, on local disk and on real S3-compatible servers."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import BUCKET, s3_store_config

from flywheel.core.config import StoreConfig
from flywheel.core.store import (
    BucketNotFound,
    LocalStore,
    ObjectNotFound,
    S3Store,
    StoreAuthError,
    StoreUnreachable,
    open_store,
)
from flywheel.ops.servers import free_port


def test_put_get_roundtrip_and_ranged_reads(any_store):
    data = bytes(range(256)) * 10
    any_store.put_bytes("a/b/blob.bin", data)
    assert any_store.get_bytes("a/b/blob.bin") == data
    assert any_store.get_bytes("a/b/blob.bin", start=100, length=50) == data[100:150]
    assert any_store.get_bytes("a/b/blob.bin", start=2500) == data[2500:]
    assert any_store.stat("a/b/blob.bin").size == len(data)
    with any_store.open("a/b/blob.bin") as f:
        assert f.read() == data


def test_overwrite_replaces_whole_object(any_store):
    any_store.put_bytes("k", b"first version, longer")
    any_store.put_bytes("k", b"second")
    assert any_store.get_bytes("k") == b"second"


def test_missing_object_is_a_clear_error(any_store):
    with pytest.raises(ObjectNotFound, match="nope/x"):
        any_store.get_bytes("nope/x")
    assert any_store.stat("nope/x") is None
    assert not any_store.exists("nope/x")


def test_listing_children_and_delete(any_store):
    for key in ["d/2/x", "d/1/y", "d/1/z", "e/w", "dd/q"]:
        any_store.put_bytes(key, key.encode())
    assert [o.key for o in any_store.list("d")] == ["d/1/y", "d/1/z", "d/2/x"]
    assert [o.size for o in any_store.list("d/1")] == [5, 5]
    assert any_store.children("d") == ["1", "2"]
    assert any_store.children("") == ["d", "dd", "e"]
    assert any_store.children("missing") == []
    assert any_store.delete_prefix("d/1") == 2
    assert [o.key for o in any_store.list("d")] == ["d/2/x"]
    any_store.delete(["e/w", "never/existed"])
    assert not any_store.exists("e/w")


def test_create_if_absent_creates_once(any_store):
    assert any_store.create_if_absent("m/COMMITTED", b"one") is True
    assert any_store.create_if_absent("m/COMMITTED", b"two") is False
    assert any_store.get_bytes("m/COMMITTED") == b"one"


def test_create_if_absent_under_a_race_has_one_winner(any_store):
    barrier = threading.Barrier(6)

    def attempt(i):
        barrier.wait()
        return any_store.create_if_absent("race/marker", f"writer-{i}".encode())

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(attempt, range(6)))
    assert results.count(True) == 1
    assert any_store.get_bytes("race/marker") == f"writer-{results.index(True)}".encode()


def test_put_file_large_is_multipart_and_complete(any_store, tmp_path):
    path = tmp_path / "big.bin"
    payload = os.urandom(1 << 20) * 12  # 12 MiB: above boto3's 8 MiB multipart threshold
    path.write_bytes(payload)
    any_store.put_file("big/object.bin", path)
    assert any_store.stat("big/object.bin").size == len(payload)
    assert any_store.get_bytes("big/object.bin", start=9 << 20, length=4096) == payload[9 << 20 : (9 << 20) + 4096]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/", "a\\b"])
def test_invalid_keys_are_refused(any_store, key):
    with pytest.raises(ValueError, match="invalid store key"):
        any_store.put_bytes(key, b"x")


def test_local_writes_leave_no_temp_files_visible(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("x/y", b"1")
    store.create_if_absent("x/z", b"2")
    store.create_if_absent("x/z", b"3")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y", "z"]


def test_open_store_picks_backend(tmp_path, seaweedfs):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    cfg = s3_store_config(seaweedfs, f"s3://{BUCKET}/p")
    s3 = open_store(config=cfg)
    assert isinstance(s3, S3Store) and s3.root_uri == f"s3://{BUCKET}/p"
    assert s3.uri("a/b") == f"s3://{BUCKET}/p/a/b"


def test_wrong_credentials_are_one_clear_error(seaweedfs):
    cfg = s3_store_config(seaweedfs, f"s3://{BUCKET}/auth")
    store = S3Store(cfg.root, cfg, client=seaweedfs.client("wrong-key", "wrong-secret"))
    with pytest.raises(StoreAuthError, match="access denied") as err:
        store.put_bytes("x", b"1")
    assert "wrong-secret" not in str(err.value) and "wrong-key" not in str(err.value)
    with pytest.raises(StoreAuthError):
        store.check()


@pytest.mark.parametrize("server", ["seaweedfs", "moto"])
def test_missing_bucket_is_one_clear_error(request, server):
    srv = request.getfixturevalue(server)
    cfg = s3_store_config(srv, "s3://no-such-bucket-here/x")
    store = S3Store(cfg.root, cfg)
    with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
        store.check()
    with pytest.raises(BucketNotFound, match="does not exist"):
        store.get_bytes("k")


def test_unreachable_endpoint_fails_after_bounded_attempts():
    cfg = StoreConfig(
        root="s3://bucket/x", endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2, connect_timeout_s=1
    )
    store = S3Store(cfg.root, cfg)
    with pytest.raises(StoreUnreachable, match="unreachable after 2 attempt"):
        store.put_bytes("k", b"1")
    with pytest.raises(StoreUnreachable):
        store.check()


def test_hung_endpoint_fails_within_its_timeouts_with_a_clear_error(monkeypatch):
    """A stopped (SIGSTOPped) S3 server still accepts connections in the kernel and never
    answers: each attempt waits read_timeout_s, then the call fails naming the cause."""
    import socket
    import time

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with socket.create_server(("127.0.0.1", 0), backlog=16) as hung:  # listens, never accepts nor answers
        cfg = StoreConfig(
            root="s3://bucket/x",
            endpoint_url=f"http://127.0.0.1:{hung.getsockname()[1]}",
            max_attempts=2,
            read_timeout_s=1,
        )
        began = time.monotonic()
        with pytest.raises(StoreUnreachable, match=r"did not answer within 1 s, 2 attempt\(s\)"):
            S3Store(cfg.root, cfg).check()
        # two 1-s waits and botocore's back-off between them, not the minutes of the old defaults
        assert time.monotonic() - began >= 2


def test_transient_server_errors_are_retried_with_a_bound(moto):
    from flaky_proxy import FlakyProxy

    from flywheel.core.store import StoreError

    root = f"s3://{BUCKET}/flaky"
    with FlakyProxy(moto.endpoint_url, fail_first=2) as proxy:
        store = S3Store(root, StoreConfig(root=root, endpoint_url=proxy.url, max_attempts=3))
        store.put_bytes("k", b"after two 503s")
        assert proxy.requests == 3
        assert store.get_bytes("k") == b"after two 503s"
    with FlakyProxy(moto.endpoint_url, fail_first=10) as proxy:
        store = S3Store(root, StoreConfig(root=root, endpoint_url=proxy.url, max_attempts=3))
        with pytest.raises(StoreError, match="SlowDown") as err:
            store.put_bytes("k2", b"never")
        assert proxy.requests == 3  # bounded: max_attempts, then one clear error
        assert "flaky/k2" in str(err.value)
