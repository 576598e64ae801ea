"""One object-store interface over a root URI: a local directory or ``s3://bucket/prefix``.

Keys are ``/``-separated paths relative to the root. Every write is atomic (readers see
the old object or the new one, never a partial one); :meth:`Store.create_if_absent` is
the conditional create that commit markers rely on.

S3 goes through boto3: endpoint, region and profile come from :class:`StoreConfig`;
credentials from the usual AWS variables, profiles or instance roles, and are never put
in messages or logs. Transient S3 failures (throttling, 5xx, dropped connections) are
retried with botocore's "standard" mode: bounded attempts, exponential backoff, jitter.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from flywheel.core.config import StoreConfig


class StoreError(RuntimeError):
    """Base of all store failures; the message names the store URI and the reason."""


class ObjectNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StoreAuthError(StoreError):
    pass


class BucketNotFound(StoreError):
    pass


class StoreUnreachable(StoreError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


_BAD_KEY = re.compile(r"(^/)|(^|/)\.\.?(/|$)|//|\\")
_TMP_PREFIX = ".tmp-"


#: The key of the store's id (:meth:`Store.identity`).
STORE_ID = "STORE_ID"


def _unless_gone(function: Callable[..., Any], path: str, exc_info: Any) -> None:
    """shutil.rmtree's error handler: a file or folder already gone is no error."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _check_key(key: str) -> str:
    if not key or _BAD_KEY.search(key) or key.endswith("/"):
        raise ValueError(f"invalid store key {key!r}: must be a relative path without '.', '..' or '//'")
    return key


class Store(ABC):
    """Abstract object store rooted at :attr:`root_uri`."""

    root_uri: str

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{_check_key(key)}"

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically, replacing any existing one."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file atomically (multipart on S3 for large files)."""

    @abstractmethod
    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist; True if this call created it."""

    @abstractmethod
    def get_bytes(self, key: str, start: int | None = None, length: int | None = None) -> bytes:
        """Read a whole object, or ``length`` bytes from ``start`` (a ranged read)."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A streaming binary reader of the object."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and mtime of an object, or None if it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects under ``prefix`` (a folder-like prefix), recursively, sorted by key."""

    @abstractmethod
    def children(self, prefix: str = "") -> builtins.list[str]:
        """Names of the immediate 'folders' under ``prefix`` (like ``ls -d prefix/*/``)."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing ones are ignored."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy an object inside the store (server-side on S3, a file copy on disk)."""

    @abstractmethod
    def check(self) -> None:
        """Raise a clear :class:`StoreError` if the store cannot be used (auth, bucket, network)."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        self.delete(keys)
        return len(keys)

    def last_activity(self, prefix: str) -> float:
        """The newest modification time under ``prefix`` (0 when empty), counting objects still
        being written where the store can see them (a local temporary file)."""
        return max((o.mtime for o in self.list(prefix)), default=0.0)

    def local_path(self, key: str) -> Path | None:
        """The object's path on this machine when the store is local, else None."""
        return None

    def identity(self) -> str:
        """This store's id: drawn once, kept in the store (``STORE_ID``), so it follows the
        store's contents wherever they are mounted, moved or restored; two stores never share
        one (what lives in a store is named by it, not by its path)."""
        if not self.exists(STORE_ID):
            self.create_if_absent(STORE_ID, uuid.uuid4().hex.encode())  # the first writer's id wins
        return self.get_bytes(STORE_ID).decode().strip()


class LocalStore(Store):
    """A directory. Writes go to a hidden temp file in the same folder, then rename."""

    def __init__(self, root: str | Path):
        self.root = Path(str(root).removeprefix("file://")).expanduser().resolve()
        self.root_uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.root_uri!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def _write_tmp(self, target: Path, write: Callable[[BinaryIO], object]) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{target.name}"
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        os.replace(self._write_tmp(target, lambda f: f.write(data)), target)

    def put_file(self, key: str, path: str | Path) -> None:
        target = self._path(key)

        def copy(f: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 4 * 2**20)

        os.replace(self._write_tmp(target, copy), target)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        tmp = self._write_tmp(target, lambda f: f.write(data))
        try:
            os.link(tmp, target)  # atomic, fails if target exists, content already complete
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str, start: int | None = None, length: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if start:
                    f.seek(start)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri(key)}: no such object") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri(key)}: no such object") from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime) if not self._path(key).is_dir() else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        found = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                p = Path(dirpath) / name
                st = p.stat()
                found.append(ObjectInfo(p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
        yield from sorted(found, key=lambda o: o.key)

    def children(self, prefix: str = "") -> builtins.list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def _files(self, prefix: str) -> builtins.list[Path]:
        """Every file under ``prefix``, temporary ones (a write in progress or killed) too."""
        base = self._path(prefix)
        return [Path(d) / name for d, _, names in os.walk(base) for name in names] if base.is_dir() else []

    def delete_prefix(self, prefix: str) -> int:
        """Remove the folder ``prefix`` whole, a killed writer's temporary files too."""
        files = self._files(prefix)
        if self._path(prefix).is_dir():
            shutil.rmtree(self._path(prefix), onerror=_unless_gone)  # another remover may be at it too
            self._prune(self._path(prefix))
        return len(files)

    def last_activity(self, prefix: str) -> float:
        return max((f.stat().st_mtime for f in self._files(prefix)), default=0.0)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            self._prune(path)

    def _prune(self, path: Path) -> None:
        """Folders are implicit, as on S3: remove the ones above ``path`` left empty."""
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except FileNotFoundError:
                continue
            except OSError:  # not empty
                break

    def copy(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        if not source.exists():
            raise ObjectNotFound(f"{self.uri(src)}: no such object")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{target.name}"
        # a copy, not a hard link: a file damaged on disk must not damage every version sharing it
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self._write_tmp(self.root / "probe", lambda f: f.write(b"ok"))
            probe.unlink()
        except OSError as e:
            raise StoreError(f"store {self.root_uri}: not writable: {e.strerror or e}") from None


_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
    "403",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store(Store):
    """``s3://bucket/prefix`` through boto3 (AWS, MinIO, SeaweedFS, Ceph)."""

    def __init__(self, root_uri: str, config: StoreConfig | None = None, *, client: Any = None):
        if not root_uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {root_uri!r}")
        bucket, _, prefix = root_uri[5:].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.config = config or StoreConfig(root=root_uri)
        self.client = client or make_s3_client(self.config)
        self.endpoint = self.config.endpoint_url or "AWS S3"

    def __repr__(self) -> str:
        return f"S3Store({self.root_uri!r}, endpoint={self.endpoint!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # a boto3 client does not pickle: another process (a DataLoader worker) makes its own
        return (S3Store, (self.root_uri, self.config))

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A URL that lets a browser GET ``key`` for ``expires_s`` seconds, without credentials."""
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)}, ExpiresIn=expires_s
            )
        )

    def _k(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _translate(self, err: Exception, what: str) -> StoreError:
        """Turn a botocore failure into one clear StoreError naming store, object, reason."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        where = f"{what} (endpoint {self.endpoint})"
        if isinstance(err, NoCredentialsError):
            return StoreAuthError(
                f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        if isinstance(err, ReadTimeoutError):
            return StoreUnreachable(
                f"{where}: the endpoint accepted the connection but did not answer within "
                f"{self.config.read_timeout_s:g} s, {self.config.max_attempts} attempt(s): is the server hung or "
                "overloaded? (store.read_timeout_s, store.max_attempts)"
            )
        if isinstance(err, (EndpointConnectionError, ConnectTimeoutError)):
            return StoreUnreachable(
                f"{where}: endpoint unreachable after {self.config.max_attempts} attempt(s): {type(err).__name__}"
            )
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return BucketNotFound(f"{where}: bucket {self.bucket!r} does not exist")
            if code in _AUTH_CODES or status == 403:
                return StoreAuthError(
                    f"{where}: access denied ({code or status}); check the credentials and the bucket policy"
                )
            if code in _MISSING_CODES or status == 404:
                return ObjectNotFound(f"{where}: no such object")
            return StoreError(f"{where}: S3 error {code or status}: {err.response.get('Error', {}).get('Message', '')}")
        return StoreError(f"{where}: {type(err).__name__}: {err}")

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError) as e:
            raise self._translate(e, what) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"put {self.uri(key)}", self.client.put_object, Bucket=self.bucket, Key=self._k(key), Body=data)

    def put_file(self, key: str, path: str | Path) -> None:
        # upload_file does multipart above 8 MiB; S3 makes the object visible only when complete.
        from boto3.exceptions import S3UploadFailedError

        try:
            self._call(f"upload {self.uri(key)}", self.client.upload_file, str(path), self.bucket, self._k(key))
        except S3UploadFailedError as e:
            raise StoreError(f"upload {self.uri(key)} (endpoint {self.endpoint}): {e}") from None

    def create_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        for attempt in range(8):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
                return True
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                if code == "PreconditionFailed":
                    return False
                if code == "ConditionalRequestConflict":  # a racing create is in flight
                    time.sleep(0.05 * 2**attempt)
                    if self.exists(key):
                        return False
                    continue
                raise self._translate(e, f"create {self.uri(key)}") from None
            except Exception as e:  # BotoCoreError
                raise self._translate(e, f"create {self.uri(key)}") from None
        raise StoreError(f"create {self.uri(key)}: conditional create kept conflicting")

    def get_bytes(self, key: str, start: int | None = None, length: int | None = None) -> bytes:
        kwargs = {"Bucket": self.bucket, "Key": self._k(key)}
        if start is not None or length is not None:
            s = start or 0
            kwargs["Range"] = f"bytes={s}-" + ("" if length is None else str(s + length - 1))
        resp = self._call(f"get {self.uri(key)}", self.client.get_object, **kwargs)
        data: bytes = resp["Body"].read()
        return data

    def open(self, key: str) -> BinaryIO:
        resp = self._call(f"get {self.uri(key)}", self.client.get_object, Bucket=self.bucket, Key=self._k(key))
        body: BinaryIO = resp["Body"]
        return body

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._call(f"head {self.uri(key)}", self.client.head_object, Bucket=self.bucket, Key=self._k(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, resp["ContentLength"], resp["LastModified"].timestamp())

    def _paginate(self, prefix: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        full = self._k(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full, **kwargs)
        try:
            yield from pages
        except Exception as e:
            raise self._translate(e, f"list {self.root_uri}/{prefix}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for page in self._paginate(prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(self._rel(obj["Key"]), obj["Size"], obj["LastModified"].timestamp())

    def children(self, prefix: str = "") -> builtins.list[str]:
        names = []
        for page in self._paginate(prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                # SeaweedFS keeps a prefix listed after its last object is deleted; S3 does
                # not. Only prefixes that still hold an object count, on every server.
                if self.client.list_objects_v2(Bucket=self.bucket, Prefix=cp["Prefix"], MaxKeys=1).get("KeyCount", 0):
                    names.append(cp["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        return sorted(names)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), 1000):  # S3's batch limit
            batch = [{"Key": self._k(k)} for k in keys[i : i + 1000]]
            resp = self._call(
                f"delete in {self.root_uri}",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StoreError(
                    f"delete in {self.root_uri}: {len(resp['Errors'])} failed, "
                    f"e.g. {first.get('Key')}: {first.get('Code')}"
                )

    def copy(self, src: str, dst: str) -> None:
        # Managed copy: server-side, multipart above 5 GiB.
        self._call(
            f"copy {self.uri(src)} -> {self.uri(dst)}",
            self.client.copy,
            {"Bucket": self.bucket, "Key": self._k(src)},
            self.bucket,
            self._k(dst),
        )

    def check(self) -> None:
        try:
            self._call(f"store {self.root_uri}", self.client.head_bucket, Bucket=self.bucket)
        except ObjectNotFound:  # HEAD has no body: a missing bucket is a bare 404
            raise BucketNotFound(
                f"store {self.root_uri} (endpoint {self.endpoint}): bucket {self.bucket!r} does not exist"
            ) from None


def make_s3_client(config: StoreConfig) -> Any:
    """A boto3 S3 client with bounded retries; create one per process (not fork-safe)."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session()
    if config.credentials_file:
        core.set_config_variable("credentials_file", str(config.credentials_file))
    session = boto3.session.Session(botocore_session=core, profile_name=config.profile)
    return session.client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region or session.region_name or "us-east-1",
        config=Config(
            # total_max_attempts counts the first try; botocore's "max_attempts" counts only retries.
            retries={"total_max_attempts": config.max_attempts, "mode": "standard"},
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            # Path-style works with every S3-compatible server; AWS still accepts it.
            s3={"addressing_style": "path"} if config.endpoint_url else None,
        ),
    )


def open_store(root: str | None = None, config: StoreConfig | None = None) -> Store:
    """The store for ``root`` (default: ``config.root``)."""
    config = config or StoreConfig()
    root = root or config.root
    if root.startswith("s3://"):
        return S3Store(root, config)
    return LocalStore(root)


def read_uri(uri: str, config: StoreConfig, *, base: Path | None = None, max_bytes: int | None = None) -> bytes:
    """Bytes of one file given by the user: a local path (relative to ``base``) or an
    ``s3://bucket/key`` URI on the configured endpoint. A missing file raises
    FileNotFoundError; one over ``max_bytes`` raises ValueError("... over the limit ...")."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        store = open_store(f"s3://{bucket}", config)
        info = store.stat(key)
        if info is None:
            raise FileNotFoundError(uri)
        if max_bytes is not None and info.size > max_bytes:
            raise ValueError(f"{info.size} bytes, over the limit of {max_bytes}")
        return store.get_bytes(key)
    path = Path(uri) if base is None or Path(uri).is_absolute() else base / uri
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{size} bytes, over the limit of {max_bytes}")
    return path.read_bytes()
