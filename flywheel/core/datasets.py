"""Immutable, versioned datasets: webdataset tar shards + a Parquet manifest + a commit marker.

Layout under the store root::

    datasets/<name>/<version>/COMMITTED.json          written last; makes the version visible
    datasets/<name>/<version>/<attempt>/manifest.parquet
    datasets/<name>/<version>/<attempt>/shards/shard-000000.tar ...

Each writer writes into its own attempt folder and then creates the marker with a
conditional create, so exactly one attempt is ever committed and committed files are
never overwritten, even when two writers race or a producer is not bit-for-bit
deterministic. A killed writer leaves only an uncommitted attempt folder: invisible to
readers, removed by the next commit of that version or by :func:`collect_garbage`.

The version is a digest of the dataset kind's schema, the inputs and the config that made
it (:func:`version_of`): the same inputs give the same version, and a re-run finds it
committed and does nothing. Its content digest covers the rows, each sample's bytes and the
quarantine, not the sharding (``shard_max_samples`` and ``shard_max_bytes`` change how the
same samples are packed, not what the version holds).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.core.contracts import QUARANTINE_SCHEMA, DatasetSpec, get_spec
from flywheel.core.digests import canonical, digest_of
from flywheel.core.records import DatasetRef, Rejected, Sample
from flywheel.core.store import ObjectNotFound, S3Store, Store

log = logging.getLogger(__name__)

MARKER = "COMMITTED.json"
MANIFEST = "manifest.parquet"
QUARANTINE = "quarantine.parquet"
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")  # no '.': webdataset splits key/ext at the first dot


class DatasetError(RuntimeError):
    pass


class DatasetNotCommitted(DatasetError):
    pass


class InvalidVersion(DatasetError):
    """A version string that is not one (a path, say): refused before it reaches the store."""


VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DatasetCorrupt(DatasetError):
    pass


class SampleError(DatasetError, ValueError):
    """A sample does not fit the dataset's contract; names the sample and the reason."""


def version_of(spec: DatasetSpec, *, inputs: Mapping[str, Any], config: Any = None, code_version: str = "1") -> str:
    """The version of a dataset made from ``inputs`` with ``config`` by code ``code_version``."""
    return digest_of(
        {"spec": spec.name, "schema": spec.fingerprint, "inputs": inputs, "config": config, "code": code_version}
    )[:16]


def _whole(urls: Iterable[str]) -> Iterable[str]:
    """A webdataset node / worker splitter that gives this reader every shard it asks for
    (:class:`flywheel.learning.examples.ExampleStream` splits the data between readers)."""
    return urls


def _prefix(name: str, version: str | None = None) -> str:
    if version is not None and not VERSION.match(version):
        raise InvalidVersion(
            f"dataset {name}@{version}: not a version (letters, digits, '.', '-', '_', not starting with '.')"
        )
    return f"datasets/{name}" + (f"/{version}" if version else "")


class DatasetWriter:
    """Writes one dataset version. Use as a context manager; commit happens on clean exit.

    >>> with DatasetWriter(store, SHAPES, version, inputs={...}) as w:
    ...     w.add("obj-0001", {"object_id": ...}, {"occ.npy": encode_npy(grid)})
    >>> w.ref
    """

    def __init__(
        self,
        store: Store,
        spec: DatasetSpec,
        version: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        config: Any = None,
        parents: list[DatasetRef] | tuple[DatasetRef, ...] = (),
        shard_max_samples: int = 1000,
        shard_max_bytes: int = 256 * 2**20,
        stale_attempt_hours: float = 6.0,
    ):
        self.store, self.spec, self.version = store, spec, version
        store.check()  # credentials, bucket, network: fail before any work is done
        self.inputs = canonical(inputs or {})
        self.config = canonical(config)
        self.parents = list(parents)
        self.shard_max_samples, self.shard_max_bytes = shard_max_samples, shard_max_bytes
        self.stale_attempt_hours = stale_attempt_hours
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.attempt = f"attempt-{stamp}-{uuid.uuid4().hex[:8]}"
        self._began = time.time()
        self._base = f"{_prefix(spec.name, version)}/{self.attempt}"
        self._rows: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []  # table-only datasets: rows added in bulk
        self._quarantine: list[dict[str, Any]] = []
        self._warnings: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._shards: list[dict[str, Any]] = []
        self._tmpdir = tempfile.TemporaryDirectory(prefix="flywheel-shards-")
        self._tar: tarfile.TarFile | None = None
        self._tar_path: Path | None = None
        self._tar_count = self._tar_bytes = 0
        self._ref: DatasetRef | None = None
        #: What the producer saw, for people and gates (e.g. per-file ingestion counts); kept in
        #: the commit marker, not part of the content digest.
        self.report: dict[str, Any] = {}

    # -- writing ---------------------------------------------------------------------
    def add(self, key: str, row: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
        """Add one sample: its manifest ``row`` (spec columns) and its ``files`` (ext -> bytes)."""
        self._check_sample(key, row, files)
        if (
            self._tar is None
            or self._tar_count >= self.shard_max_samples
            or (self._tar_count and self._tar_bytes >= self.shard_max_bytes)
        ):
            self._roll_shard()
        assert self._tar is not None and self._tar_path is not None
        digest = hashlib.sha256()
        total = 0
        for ext in sorted(files):
            data = files[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444  # deterministic headers
            self._tar.addfile(info, io.BytesIO(data))
            digest.update(f"{ext}\0{len(data)}\0".encode())
            digest.update(data)
            total += len(data)
        self._tar_count += 1
        self._tar_bytes += total
        self._keys.add(key)
        self._rows.append(
            {
                "sample_key": key,
                "shard": self._tar_path.name,
                "sample_bytes": total,
                "sample_sha256": digest.hexdigest(),
                **row,
            }
        )

    def add_table(self, table: pa.Table, key_column: str) -> None:
        """Add many rows at once to a table-only dataset (a spec without files): the rows
        live in the manifest alone, keyed by ``key_column``."""
        if self.spec.files:
            raise SampleError(f"dataset {self.spec.name}: add_table is for table-only datasets; use add()")
        try:
            table = table.select(self.spec.schema.names).cast(self.spec.schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
            raise SampleError(f"dataset {self.spec.name}@{self.version}: table does not fit the schema: {e}") from None
        keys = table[key_column].to_pylist()
        if len(set(keys)) != len(keys) or self._keys.intersection(keys):
            raise SampleError(f"dataset {self.spec.name}@{self.version}: duplicate {key_column} values")
        self._keys.update(keys)
        n = table.num_rows
        storage = pa.table(
            {
                "sample_key": table[key_column],
                "shard": pa.array([""] * n),
                "sample_bytes": pa.array([0] * n, pa.int64()),
                "sample_sha256": pa.array([""] * n),
            }
        )
        self._tables.append(pa.Table.from_arrays(storage.columns + table.columns, schema=self.spec.manifest_schema))

    def quarantine(self, item_id: str, kind: str, reason: str, detail: str = "") -> None:
        """Record an item this stage refused; kept with the version, never dropped."""
        self._quarantine.append({"item_id": str(item_id), "kind": kind, "reason": reason, "detail": detail or reason})

    def put(self, item: Sample | Rejected, kind: str = "item") -> bool:
        """Add a :class:`Sample`, or quarantine a :class:`Rejected` item (as ``kind`` unless it
        says what it is); True if added."""
        if isinstance(item, Rejected):
            self.quarantine(item.item_id, item.kind or kind, item.reason, item.detail)
            return False
        self.add(item.key, item.row, item.files)
        for w in item.warnings:
            self.warn(item.key, w.reason, w.detail)
        return True

    def warn(self, key: str, reason: str, detail: str = "") -> None:
        """Record that sample ``key`` was accepted with a warning; kept in the commit marker."""
        self._warnings.append({"item_id": key, "reason": reason, "detail": detail or reason})

    def add_shard_from(self, part: Dataset, shard: dict[str, Any]) -> None:
        """Adopt a committed shard of another dataset version (a cached part) as is: checked
        against the part's marker first, and copied (a damaged part is refused by name, never
        carried into a new version)."""
        self._close_shard()
        source = f"{part._base}/shards/{shard['name']}"
        sha = hashlib.sha256()
        try:
            with self.store.open(source) as f:
                for chunk in iter(lambda: f.read(2**20), b""):
                    sha.update(chunk)
        except ObjectNotFound:
            raise part._corrupt(shard["name"], "is missing") from None
        if sha.hexdigest() != shard["sha256"]:
            raise part._corrupt(shard["name"], "is damaged (its checksum differs from its commit marker's)")
        name = f"shard-{len(self._shards):06d}.tar"
        rows = [r for r in part.manifest().to_pylist() if r["shard"] == shard["name"]]
        for row in rows:
            if row["sample_key"] in self._keys:
                raise SampleError(
                    f"dataset {self.spec.name}@{self.version}: duplicate sample key "
                    f"{row['sample_key']!r} in part {part.ref}"
                )
            self._keys.add(row["sample_key"])
            self._rows.append({**row, "shard": name})
        self.store.copy(source, f"{self._base}/shards/{name}")
        self._shards.append({**shard, "name": name})

    def _check_sample(self, key: str, row: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
        where = f"dataset {self.spec.name}@{self.version}, sample {key!r}"
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise SampleError(f"{where}: key must match {_KEY_RE.pattern}")
        if key in self._keys:
            raise SampleError(f"{where}: duplicate sample key")
        want, got = set(self.spec.schema.names), set(row)
        if want != got:
            raise SampleError(
                f"{where}: manifest row columns differ from the schema: "
                f"missing {sorted(want - got)}, unexpected {sorted(got - want)}"
            )
        if set(files) != set(self.spec.files):
            raise SampleError(f"{where}: files {sorted(files)} differ from the contract {sorted(self.spec.files)}")
        for ext, data in files.items():
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise SampleError(f"{where}: file {ext!r} must be bytes, got {type(data).__name__}")
        nulls = [f.name for f in self.spec.schema if not f.nullable and row[f.name] is None]
        if nulls:
            raise SampleError(f"{where}: manifest row does not fit the schema: {nulls} must not be null")
        try:
            pa.Table.from_pylist([dict(row)], schema=self.spec.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise SampleError(f"{where}: manifest row does not fit the schema: {e}") from None

    def _roll_shard(self) -> None:
        self._close_shard()
        name = f"shard-{len(self._shards):06d}.tar"
        self._tar_path = Path(self._tmpdir.name) / name
        self._tar = tarfile.open(self._tar_path, "w", format=tarfile.USTAR_FORMAT)
        self._tar_count = self._tar_bytes = 0

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        path = self._tar_path
        assert path is not None
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                sha.update(chunk)
        key = f"{self._base}/shards/{path.name}"
        self.store.put_file(key, path)
        self._shards.append(
            {"name": path.name, "sha256": sha.hexdigest(), "bytes": path.stat().st_size, "samples": self._tar_count}
        )
        path.unlink()
        log.info(
            "%s@%s: shard %d uploaded, %d samples so far",
            self.spec.name,
            self.version,
            len(self._shards),
            len(self._rows),
        )

    # -- committing ------------------------------------------------------------------
    def commit(self) -> DatasetRef:
        """Upload the last shard and the manifest, then make the version visible."""
        self._close_shard()
        table = pa.concat_tables([pa.Table.from_pylist(self._rows, schema=self.spec.manifest_schema), *self._tables])
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        manifest = buf.getvalue()
        self.store.put_bytes(f"{self._base}/{MANIFEST}", manifest)
        manifest_sha = hashlib.sha256(manifest).hexdigest()
        quarantine = pa.Table.from_pylist(self._quarantine, schema=QUARANTINE_SCHEMA)
        qbuf = io.BytesIO()
        pq.write_table(quarantine, qbuf, compression="zstd")
        self.store.put_bytes(f"{self._base}/{QUARANTINE}", qbuf.getvalue())
        by_reason = _count(self._quarantine)
        # The content digest covers every row (each sample's sha256 is one of its columns) but
        # not how the samples were cut into shards: sharding settings change no content.
        rows = io.BytesIO()
        pq.write_table(table.drop_columns(["shard"]), rows, compression="zstd")
        contents: dict[str, Any] = {
            "rows": hashlib.sha256(rows.getvalue()).hexdigest(),
            "quarantine": hashlib.sha256(qbuf.getvalue()).hexdigest(),
        }
        if self._warnings:
            contents["warnings"] = self._warnings
        content = digest_of(contents)
        marker = {
            "name": self.spec.name,
            "version": self.version,
            "attempt": self.attempt,
            "committed_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "num_rows": table.num_rows,
            "digest": content,
            "schema_fingerprint": self.spec.fingerprint,
            "manifest": {"name": MANIFEST, "sha256": manifest_sha, "bytes": len(manifest)},
            "shards": self._shards,
            "inputs": self.inputs,
            "config": self.config,
            "quarantine": {
                "name": QUARANTINE,
                "rows": len(self._quarantine),
                "sha256": hashlib.sha256(qbuf.getvalue()).hexdigest(),
                "by_reason": by_reason,
            },
            "parents": [p.to_dict() for p in self.parents],
        }
        if self.report:
            marker["report"] = canonical(self.report)
        if self._warnings:
            marker["warnings"] = {
                "rows": len(self._warnings),
                "by_reason": _count(self._warnings),
                "items": self._warnings,
            }
        created = self.store.create_if_absent(
            f"{_prefix(self.spec.name, self.version)}/{MARKER}", json.dumps(marker, indent=1).encode()
        )
        if created:
            self._ref = _ref_from_marker(self.store, marker)
            log.info(
                "committed %s (%d rows, %d shards, %d quarantined)",
                self.ref,
                table.num_rows,
                len(self._shards),
                len(self._quarantine),
            )
        else:
            winner = read_marker(self.store, self.spec.name, self.version)
            self._ref = _ref_from_marker(self.store, winner)
            if winner["digest"] != content:
                log.warning(
                    "%s was committed by another writer with different content "
                    "(%s vs ours %s): is the producer deterministic?",
                    self.ref,
                    winner["digest"][:12],
                    content[:12],
                )
            self.store.delete_prefix(self._base)
        self._remove_stale_attempts()
        self._tmpdir.cleanup()
        return self.ref

    def abort(self) -> None:
        """Drop this attempt's uploads (a crash skips this; the debris stays invisible)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._tmpdir.cleanup()
        try:
            self.store.delete_prefix(self._base)
        except Exception as e:  # keep the original failure the one people see
            log.warning("could not remove attempt %s: %s", self._base, e)

    def _remove_stale_attempts(self) -> None:
        # attempts idle since before this writer began: killed writers (a concurrent one is active)
        collect_garbage(
            self.store,
            self.spec.name,
            older_than_hours=self.stale_attempt_hours,
            version=self.version,
            idle_before=self._began,
        )

    @property
    def ref(self) -> DatasetRef:
        """The committed version (after :meth:`commit`, or the ``with`` block)."""
        if self._ref is None:
            raise DatasetError(f"{self.spec.name}@{self.version}: not committed yet")
        return self._ref

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _count(rows: list[dict[str, Any]]) -> dict[str, int]:
    by_reason: dict[str, int] = {}
    for row in rows:
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
    return by_reason


def _ref_from_marker(store: Store, marker: dict[str, Any]) -> DatasetRef:
    return DatasetRef(
        name=marker["name"],
        version=marker["version"],
        uri=store.uri(_prefix(marker["name"], marker["version"])),
        digest=marker["digest"],
        num_rows=marker["num_rows"],
    )


def read_marker(store: Store, name: str, version: str) -> dict[str, Any]:
    try:
        raw = store.get_bytes(f"{_prefix(name, version)}/{MARKER}")
    except ObjectNotFound:
        debris = bool(store.children(_prefix(name, version)))
        why = "an uncommitted (unfinished or crashed) write exists" if debris else "no such version"
        raise DatasetNotCommitted(f"dataset {name}@{version} in {store.root_uri}: not committed ({why})") from None
    marker: dict[str, Any] = json.loads(raw)
    return marker


def committed_ref(store: Store, name: str, version: str) -> DatasetRef | None:
    """The ref of a committed version, or None: what a task checks before doing any work."""
    try:
        return _ref_from_marker(store, read_marker(store, name, version))
    except DatasetNotCommitted:
        return None


def list_versions(store: Store, name: str) -> list[dict[str, Any]]:
    """Markers of the committed versions of ``name``, oldest first."""
    markers = []
    for version in store.children(_prefix(name)):
        try:
            markers.append(read_marker(store, name, version))
        except DatasetNotCommitted:
            continue
    return sorted(markers, key=lambda m: (m["committed_at"], m["version"]))


def list_datasets(store: Store) -> list[str]:
    return store.children("datasets")


_OPENER_LOCK = threading.Lock()
_S3_SCHEMES: dict[str, Any] = {}  # scheme -> StoreConfig
_CLIENTS: dict[tuple[int, str], Any] = {}


def _s3_scheme(store: S3Store) -> str:
    """A webdataset URL scheme for this store's endpoint, region and profile.

    webdataset has no s3:// support, and a plain s3:// URL does not say which endpoint
    it lives on: two stores with the same bucket name on different servers must not be
    confused, so each store configuration gets a scheme of its own."""
    import sys

    import webdataset.gopen  # noqa: F401  (the module, not the function of the same name)

    cfg = store.config
    scheme = "s3x" + digest_of([cfg.endpoint_url, cfg.region, cfg.profile])[:12]
    with _OPENER_LOCK:
        _S3_SCHEMES[scheme] = cfg
        sys.modules["webdataset.gopen"].gopen_schemes[scheme] = _gopen_s3
    return scheme


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    if mode[0] != "r":
        raise ValueError(f"{url}: the s3 opener only reads")
    from flywheel.core.store import make_s3_client

    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    cache_key = (os.getpid(), scheme)  # one client per process: boto3 clients are not fork-safe
    if cache_key not in _CLIENTS:
        _CLIENTS[cache_key] = make_s3_client(_S3_SCHEMES[scheme])
    return _CLIENTS[cache_key].get_object(Bucket=bucket, Key=key)["Body"]


class Dataset:
    """A committed dataset version, opened for reading. Refuses uncommitted versions."""

    def __init__(self, store: Store, name: str, version: str | None = None):
        self.store = store
        self.spec = get_spec(name)
        if version is None:
            versions = list_versions(store, name)
            if not versions:
                raise DatasetNotCommitted(f"dataset {name} in {store.root_uri}: no committed version")
            version = versions[-1]["version"]
        self.marker = read_marker(store, name, version)
        self.ref = _ref_from_marker(store, self.marker)
        self._base = f"{_prefix(name, version)}/{self.marker['attempt']}"
        self._manifest: pa.Table | None = None

    @classmethod
    def open(cls, store: Store, spec: str) -> Dataset:
        """Open ``NAME`` (latest committed) or ``NAME@VERSION``."""
        name, _, version = spec.partition("@")
        return cls(store, name, version or None)

    def manifest(self) -> pa.Table:
        if self._manifest is None:
            data = self.store.get_bytes(f"{self._base}/{MANIFEST}")
            if hashlib.sha256(data).hexdigest() != self.marker["manifest"]["sha256"]:
                raise DatasetCorrupt(f"{self.ref}: manifest checksum mismatch")
            self._manifest = pq.read_table(io.BytesIO(data))
        return self._manifest

    def quarantine(self) -> pa.Table:
        """What the stage refused when it made this version: item, kind, reason, detail."""
        info = self.marker.get("quarantine")
        if not info:
            return QUARANTINE_SCHEMA.empty_table()
        data = self.store.get_bytes(f"{self._base}/{info['name']}")
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise DatasetCorrupt(f"{self.ref}: quarantine table checksum mismatch")
        return pq.read_table(io.BytesIO(data))

    def shard_urls(self, shards: Collection[str] | None = None) -> list[str]:
        """URLs webdataset can open: local paths, or S3 URLs with this store's scheme."""
        scheme = _s3_scheme(self.store) if isinstance(self.store, S3Store) else None
        urls = []
        for shard in self.marker["shards"]:
            if shards is not None and shard["name"] not in shards:
                continue
            key = f"{self._base}/shards/{shard['name']}"
            local = self.store.local_path(key)
            if local is not None:
                urls.append(str(local))
            else:
                assert scheme is not None, "only S3 stores have no local path"
                urls.append(scheme + self.store.uri(key).removeprefix("s3"))
        return urls

    def shard_names(self) -> list[str]:
        """The version's shards, in sample order."""
        return [s["name"] for s in self.marker["shards"]]

    def samples(
        self, keys: Iterable[str] | None = None, shards: Collection[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stream samples as dicts ``{"__key__": key, ext: bytes, ...}`` through webdataset;
        with ``keys``, only those samples, reading only the shards that hold them; with
        ``shards``, only those shards (names from :meth:`shard_names`)."""
        import webdataset as wds

        wanted = None if keys is None else set(keys)
        if shards is not None:
            unknown = set(shards) - set(self.shard_names())
            if unknown:
                raise ValueError(f"{self.ref}: no shard {sorted(unknown)[0]!r}")
        if wanted is not None:
            table = self.manifest().select(["sample_key", "shard"]).to_pydict()
            holding = {sh for k, sh in zip(table["sample_key"], table["shard"]) if k in wanted}
            shards = holding if shards is None else holding & set(shards)
        listed = [s for s in self.marker["shards"] if shards is None or s["name"] in shards]
        stream = self._read_shards(wds, listed, self.shard_urls(shards))
        return stream if wanted is None else (s for s in stream if s["__key__"] in wanted)

    def _read_shards(self, wds: Any, shards: list[dict[str, Any]], urls: list[str]) -> Iterator[dict[str, Any]]:
        """Each shard's samples in turn. A shard that cannot be read, or holds fewer or more
        samples than its commit marker says (a tar cut at a record boundary reads cleanly), is
        one clear error naming the dataset, version and shard: never a raw tar error, never
        silently fewer samples."""
        for shard, url in zip(shards, urls, strict=True):
            count = 0
            try:
                # this reader reads the shards it was given, in one process, as one of a data-parallel
                # group or in a DataLoader worker: webdataset would split them between those itself
                reader = wds.WebDataset(
                    [url], shardshuffle=False, empty_check=False, nodesplitter=_whole, workersplitter=_whole
                )
                for sample in reader:
                    count += 1
                    yield sample
            except (tarfile.TarError, OSError, EOFError, ValueError) as e:
                raise self._corrupt(shard["name"], f"is unreadable ({type(e).__name__}: {e})") from None
            if "samples" in shard and count != shard["samples"]:
                raise self._corrupt(shard["name"], f"holds {count} samples, its commit marker says {shard['samples']}")

    def _corrupt(self, shard: str, what: str) -> DatasetCorrupt:
        spec = f"{self.ref.name}@{self.ref.version}"
        return DatasetCorrupt(
            f"{self.ref}: shard {shard} {what}; `flywheel datasets show {spec} --verify` lists the damage, "
            f"`flywheel datasets repair {spec}` removes the version so that re-running its flow rebuilds it"
        )

    def verify(self) -> list[str]:
        """Check every shard's checksum and that shards and manifest hold the same samples.

        Returns a list of problems (empty when the version is intact)."""
        problems: list[str] = []
        try:
            manifest = self.manifest()
        except DatasetCorrupt as e:
            return [str(e)]
        if not self.spec.files:  # table-only: the manifest is the data
            stray = [s["name"] for s in self.marker["shards"]]
            return [f"shard {n}: a table-only dataset has no shards" for n in stray]
        expected = {}
        for row in manifest.select(["sample_key", "shard", "sample_sha256"]).to_pylist():
            expected[row["sample_key"]] = row
        seen: set[str] = set()
        bad_shards: set[str] = set()  # reported once, not again for each of their samples
        for shard in self.marker["shards"]:
            key = f"{self._base}/shards/{shard['name']}"
            try:
                data = self.store.get_bytes(key)
            except ObjectNotFound:
                problems.append(f"shard {shard['name']}: missing")
                bad_shards.add(shard["name"])
                continue
            if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                problems.append(f"shard {shard['name']}: checksum mismatch")
                bad_shards.add(shard["name"])
                continue
            for sample_key, digest in _sample_digests(data):
                row = expected.get(sample_key)
                if row is None:
                    problems.append(f"shard {shard['name']}: sample {sample_key!r} not in manifest")
                elif row["shard"] != shard["name"] or row["sample_sha256"] != digest:
                    problems.append(f"sample {sample_key!r}: content or shard differs from manifest")
                seen.add(sample_key)
        for missing in sorted(set(expected) - seen):
            if expected[missing]["shard"] in bad_shards:
                continue
            problems.append(f"sample {missing!r}: in manifest but in no shard")
        return problems


def _sample_digests(tar_bytes: bytes) -> Iterator[tuple[str, str]]:
    """(key, digest) per sample of a shard, computed exactly as the writer does."""
    groups: dict[str, list[tuple[str, bytes]]] = {}
    order: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if key not in groups:
                groups[key] = []
                order.append(key)
            member_file = tar.extractfile(member)
            groups[key].append((ext, member_file.read() if member_file is not None else b""))
    for key in order:
        digest = hashlib.sha256()
        for ext, data in sorted(groups[key]):
            digest.update(f"{ext}\0{len(data)}\0".encode())
            digest.update(data)
        yield key, digest.hexdigest()


def remove_version(store: Store, name: str, version: str) -> int:
    """Remove a committed version (a damaged one, to rebuild it): its commit marker first, so
    no reader opens it from then on, then its files. Returns the objects removed."""
    prefix = _prefix(name, version)
    marker = f"{prefix}/{MARKER}"
    if not store.exists(marker):
        raise DatasetNotCommitted(f"dataset {name}@{version} in {store.root_uri}: not committed")
    store.delete([marker])
    return 1 + sum(store.delete_prefix(f"{prefix}/{attempt}") for attempt in store.children(prefix))


#: An attempt of a committed version idle this long (seconds) is a killed writer's.
COMMITTED_IDLE_S = 900.0


def collect_garbage(
    store: Store,
    name: str | None = None,
    *,
    older_than_hours: float = 6.0,
    version: str | None = None,
    dry_run: bool = False,
    idle_before: float | None = None,
) -> list[str]:
    """Remove uncommitted attempt folders; returns their prefixes. An attempt is debris when
    it has had no activity (files written, temporary ones included) for ``older_than_hours``
    (a younger one may belong to a writer still at work); of a committed version, already when
    idle since ``idle_before`` (a time; default: :data:`COMMITTED_IDLE_S` ago) — a killed
    writer's, which no commit will ever use."""
    removed = []
    now = time.time()
    cutoff = now - older_than_hours * 3600
    for ds in [name] if name else list_datasets(store):
        for ver in [version] if version else store.children(_prefix(ds)):
            marker = None
            try:
                marker = read_marker(store, ds, ver)
            except DatasetNotCommitted:
                pass
            for attempt in store.children(_prefix(ds, ver)):
                if marker and attempt == marker["attempt"]:
                    continue
                prefix = f"{_prefix(ds, ver)}/{attempt}"
                threshold = cutoff
                if marker is not None:
                    threshold = max(cutoff, now - COMMITTED_IDLE_S if idle_before is None else idle_before)
                if store.last_activity(prefix) < threshold:
                    if not dry_run:
                        store.delete_prefix(prefix)
                    removed.append(prefix)
    return removed


def write_dataset(
    store: Store,
    spec: DatasetSpec,
    version: str,
    samples: Iterable[tuple[str, Mapping[str, Any], Mapping[str, bytes]]],
    **writer_kwargs: Any,
) -> DatasetRef:
    """Commit ``samples`` (iterable of ``(key, row, files)``) unless the version exists."""
    existing = committed_ref(store, spec.name, version)
    if existing is not None:
        return existing
    with DatasetWriter(store, spec, version, **writer_kwargs) as writer:
        for key, row, files in samples:
            writer.add(key, row, files)
    return writer.ref


def assemble_dataset(
    store: Store,
    spec: DatasetSpec,
    version: str,
    parts: list[DatasetRef],
    quarantine: Iterable[dict[str, Any]] = (),
    **writer_kwargs: Any,
) -> DatasetRef:
    """Commit ``spec@version`` from committed parts: their shards are copied (server-side on
    S3), manifests and quarantine tables concatenated (plus ``quarantine`` rows of the
    stage itself). Nothing is re-rendered."""
    existing = committed_ref(store, spec.name, version)
    if existing is not None:
        return existing
    with DatasetWriter(store, spec, version, **writer_kwargs) as writer:
        for ref in parts:
            part = Dataset(store, ref.name, ref.version)
            for shard in part.marker["shards"]:
                writer.add_shard_from(part, shard)
            for row in part.quarantine().to_pylist():
                writer.quarantine(**row)
            for w in (part.marker.get("warnings") or {}).get("items", []):
                writer.warn(w["item_id"], w["reason"], w["detail"])
        for row in quarantine:
            writer.quarantine(**row)
    return writer.ref
