"""Data contracts: each dataset kind's schema, defined once, here.

A :class:`DatasetSpec` names a dataset kind, the pyarrow schema of its Parquet manifest
(one row per sample) and the files each sample carries in the webdataset shards. The
writer adds the storage columns of :data:`STORAGE_FIELDS` to every manifest; everything
else (writers, readers, validation suites, MLflow lineage) refers to the spec.

Geometry conventions (DESIGN.md §3), shared by rendering, model, metrics and adapters:
camera frame is OpenCV's (x right, y down, z forward); extrinsics are a 4x4 world->camera
matrix; intrinsics a 3x3 matrix in pixels; an object's pose in camera frame maps its
normalised points by p_cam = R @ (s * p) + t (column vectors); normalised meshes live in
the unit cube [-0.5, 0.5]^3; occupancy grids index (x, y, z) over that cube.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pyarrow as pa

#: Columns the dataset writer adds to every manifest.
STORAGE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("sample_key", pa.string(), nullable=False),   # webdataset __key__, unique
    pa.field("shard", pa.string(), nullable=False),        # shard file name
    pa.field("sample_bytes", pa.int64(), nullable=False),  # total bytes of the sample's files
    pa.field("sample_sha256", pa.string(), nullable=False),  # digest of its files (name+bytes)
)
_STORAGE_NAMES = {f.name for f in STORAGE_FIELDS}
_FILE_EXT = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")

_REGISTRY: dict[str, "DatasetSpec"] = {}


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset kind: its manifest schema and the files each sample carries."""

    name: str
    schema: pa.Schema
    files: tuple[str, ...]
    description: str = ""

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", self.name):
            raise ValueError(f"dataset name {self.name!r}: use lowercase letters, digits, '-'")
        clash = _STORAGE_NAMES & set(self.schema.names)
        if clash:
            raise ValueError(f"dataset {self.name}: columns {sorted(clash)} are reserved")
        for ext in self.files:
            if not _FILE_EXT.match(ext):
                raise ValueError(f"dataset {self.name}: bad file extension {ext!r}")

    @property
    def manifest_schema(self) -> pa.Schema:
        return pa.schema(list(STORAGE_FIELDS) + list(self.schema))

    @property
    def fingerprint(self) -> str:
        """Changes whenever the schema or the file list changes (part of every version)."""
        text = self.manifest_schema.to_string(show_field_metadata=False) + "|" + ",".join(self.files)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def register(spec: DatasetSpec) -> DatasetSpec:
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing.fingerprint != spec.fingerprint:
        raise ValueError(f"dataset kind {spec.name!r} is already registered with another schema")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown dataset kind {name!r} (known: {known})") from None


def registered() -> dict[str, DatasetSpec]:
    return dict(_REGISTRY)


# ----------------------------------------------------------------------------------------
# Dataset kinds. Later stages add theirs here, next to each other, so there is one place
# to read every contract.

#: Procedural occupancy shapes: the demo's synthetic objects until the mesh library lands.
SHAPES = register(DatasetSpec(
    name="shapes",
    schema=pa.schema([
        pa.field("object_id", pa.string(), nullable=False),
        pa.field("family", pa.string(), nullable=False),       # e.g. "superquadric"
        pa.field("params", pa.list_(pa.float32()), nullable=False),  # family parameters
        pa.field("resolution", pa.int32(), nullable=False),    # occupancy grid side
        pa.field("occupied_fraction", pa.float32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
    ]),
    files=("occ.npy",),  # bool[res, res, res], indexed (x, y, z) over the unit cube
    description="Procedural closed shapes as filled occupancy grids.",
))

#: Per-family summary of a shapes dataset (what the demo's second stage produces).
SHAPE_STATS = register(DatasetSpec(
    name="shape-stats",
    schema=pa.schema([
        pa.field("family", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("mean_occupied_fraction", pa.float64(), nullable=False),
    ]),
    files=("mean_occ.npy",),  # float32[res, res, res]: mean occupancy of the family
    description="Per-family statistics of a shapes dataset.",
))
