"""Content digests: of plain data (canonical JSON) and of files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flywheel.core.records import DatasetRef


def canonical(obj: Any) -> Any:
    """Plain, order-independent data for ``obj`` (a dataset reference becomes name, version and
    content digest): what digests and dataset markers record."""
    if isinstance(obj, DatasetRef):
        return {"dataset": obj.name, "version": obj.version, "digest": obj.digest}
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if hasattr(obj, "model_dump"):  # pydantic config sections and records
        return canonical(obj.model_dump(mode="json"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # typed references
        return canonical(dataclasses.asdict(obj))
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot digest {type(obj).__name__}; pass plain data or typed references")


def digest_of(obj: Any) -> str:
    """sha256 of the canonical JSON of plain data (dict order does not matter)."""
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
