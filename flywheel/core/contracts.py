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

import difflib
import hashlib
import re
from dataclasses import dataclass

import pyarrow as pa

#: Columns the dataset writer adds to every manifest.
STORAGE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("sample_key", pa.string(), nullable=False),  # webdataset __key__, unique
    pa.field("shard", pa.string(), nullable=False),  # shard file name
    pa.field("sample_bytes", pa.int64(), nullable=False),  # total bytes of the sample's files
    pa.field("sample_sha256", pa.string(), nullable=False),  # digest of its files (name+bytes)
)
_STORAGE_NAMES = {f.name for f in STORAGE_FIELDS}
_FILE_EXT = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")

_REGISTRY: dict[str, DatasetSpec] = {}

#: Items a stage refused (bad input, failed render, filter), one row each, kept with the
#: dataset version they were refused from. Nothing is dropped silently.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),  # what was refused (mesh path, object id, ...)
        pa.field("kind", pa.string(), nullable=False),  # "mesh", "object", "sample", "background", ...
        pa.field("reason", pa.string(), nullable=False),  # a short category, for counting
        pa.field("detail", pa.string(), nullable=False),  # the full message
    ]
)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset kind: its manifest schema and the files each sample carries."""

    name: str
    schema: pa.Schema
    files: tuple[str, ...]
    description: str = ""
    internal: bool = False  # a stage's intermediate (cached parts): not offered to people by name

    def __post_init__(self) -> None:
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


def part_spec(spec: DatasetSpec) -> DatasetSpec:
    """The kind of the per-batch parts a stage writes before assembling ``spec``."""
    name = f"{spec.name}-part"
    return _REGISTRY.get(name) or register(
        DatasetSpec(name, spec.schema, spec.files, f"One cached batch of {spec.name}.", internal=True)
    )


def register(spec: DatasetSpec) -> DatasetSpec:
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing.fingerprint != spec.fingerprint:
        raise ValueError(f"dataset kind {spec.name!r} is already registered with another schema")
    _REGISTRY[spec.name] = spec
    return spec


class UnknownKind(KeyError):
    """A dataset kind nobody registered; the message suggests the closest public kinds."""

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        return str(self.args[0])


def get_spec(name: str) -> DatasetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        public = sorted(n for n, spec in _REGISTRY.items() if not spec.internal)
        close = difflib.get_close_matches(name, public, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownKind(f"unknown dataset kind {name!r}{hint} (kinds: {', '.join(public) or 'none'})") from None


#: Procedural occupancy shapes: small, fast test and benchmark data for the storage layer.
SHAPES = register(
    DatasetSpec(
        name="shapes",
        schema=pa.schema(
            [
                pa.field("object_id", pa.string(), nullable=False),
                pa.field("family", pa.string(), nullable=False),  # e.g. "superquadric"
                pa.field("params", pa.list_(pa.float32()), nullable=False),  # family parameters
                pa.field("resolution", pa.int32(), nullable=False),  # occupancy grid side
                pa.field("occupied_fraction", pa.float32(), nullable=False),
                pa.field("seed", pa.int64(), nullable=False),
            ]
        ),
        files=("occ.npy",),  # bool[res, res, res], indexed (x, y, z) over the unit cube
        description="Procedural closed shapes as filled occupancy grids.",
    )
)

_F32 = pa.float32()
_MAT3 = pa.list_(_F32, 9)  # row-major 3x3
_VEC3 = pa.list_(_F32, 3)
_MAT4 = pa.list_(_F32, 16)  # row-major 4x4

#: Normalised meshes that passed the geometric filters, with their occupancy targets.
MESHES = register(
    DatasetSpec(
        name="meshes",
        schema=pa.schema(
            [
                pa.field("mesh_id", pa.string(), nullable=False),  # content digest of the geometry
                pa.field("source", pa.string(), nullable=False),  # file URI or procedural:<seed>/<i>
                pa.field("format", pa.string(), nullable=False),  # glb, obj, ..., procedural
                pa.field("family", pa.string(), nullable=False),  # procedural family or "user"
                pa.field("num_vertices", pa.int32(), nullable=False),
                pa.field("num_faces", pa.int32(), nullable=False),
                pa.field("watertight", pa.bool_(), nullable=False),  # occupancy is filled only if true
                pa.field("occupancy_resolution", pa.int32(), nullable=False),
                pa.field("occupied_fraction", _F32, nullable=False),
            ]
        ),
        files=("mesh.npz", "occ.npy"),  # npz: vertices f32[V,3] in the unit cube, faces i32[F,3], colors u8[V,4]
        description="Mesh library: normalised, filtered, de-duplicated meshes + occupancy grids.",
    )
)

#: Iso-3DO: one row per (object, view).
ISO3DO = register(
    DatasetSpec(
        name="iso3do",
        schema=pa.schema(
            [
                pa.field("object_id", pa.string(), nullable=False),  # mesh_id in the parent mesh library
                pa.field("view", pa.int32(), nullable=False),
                pa.field("width", pa.int32(), nullable=False),
                pa.field("height", pa.int32(), nullable=False),
                pa.field("K", _MAT3, nullable=False),  # intrinsics, pixels
                pa.field("world_to_cam", _MAT4, nullable=False),  # extrinsics, OpenCV
                pa.field("R", _MAT3, nullable=False),  # object pose in camera frame:
                pa.field("t", _VEC3, nullable=False),  #   p_cam = R @ (s * p) + t
                pa.field("s", _F32, nullable=False),
                pa.field("mask_pixels", pa.int32(), nullable=False),
                pa.field("num_lights", pa.int32(), nullable=False),
                pa.field("env_strength", _F32, nullable=False),
                pa.field("samples", pa.int32(), nullable=False),
            ]
        ),
        # rgb.png RGBA 8-bit sRGB; mask.png 0/255; depth.npy f32[H,W] planar z, 0 off-object;
        # occ.npy bool[r,r,r] occupancy target of the mesh.
        files=("rgb.png", "mask.png", "depth.npy", "occ.npy"),
        description="Isolated meshes rendered from many views under random lighting.",
    )
)

#: Flying Occlusions: an occludee behind an occluder, composited onto a photo.
OCCLUSIONS = register(
    DatasetSpec(
        name="occlusions",
        schema=pa.schema(
            [
                pa.field("sample_id", pa.string(), nullable=False),
                pa.field("occludee_id", pa.string(), nullable=False),
                pa.field("occluder_id", pa.string(), nullable=False),
                pa.field("background_id", pa.string(), nullable=False),
                pa.field("width", pa.int32(), nullable=False),
                pa.field("height", pa.int32(), nullable=False),
                pa.field("K", _MAT3, nullable=False),  # camera = world frame (identity extrinsics)
                pa.field("occludee_R", _MAT3, nullable=False),
                pa.field("occludee_t", _VEC3, nullable=False),
                pa.field("occludee_s", _F32, nullable=False),
                pa.field("occluder_R", _MAT3, nullable=False),
                pa.field("occluder_t", _VEC3, nullable=False),
                pa.field("occluder_s", _F32, nullable=False),
                pa.field("visible_fraction", _F32, nullable=False),  # modal / amodal pixels of the occludee
                pa.field("amodal_pixels", pa.int32(), nullable=False),
                pa.field("modal_pixels", pa.int32(), nullable=False),
                pa.field("tries", pa.int32(), nullable=False),  # layouts sampled to get this one
            ]
        ),
        # rgb.png composite RGB; modal.png / amodal.png occludee masks 0/255; depth.npy f32[H,W]
        # (0 = background); occ.npy occupancy target of the occludee.
        files=("rgb.png", "modal.png", "amodal.png", "depth.npy", "occ.npy"),
        description="Render-paste occluder/occludee pairs on natural photos.",
    )
)

# The per-batch parts that Iso-3DO and Flying Occlusions are assembled from (same schemas).
ISO3DO_PART, OCCLUSIONS_PART = part_spec(ISO3DO), part_spec(OCCLUSIONS)

#: The objects of a round that need 3D: one (image, object mask) per row. For the demo,
#: Flying-Occlusions composites stand in for real photos; their ground truth stays in the
#: source dataset (``source`` names the sample) and is never copied here.
IMAGE_POOL = register(
    DatasetSpec(
        name="image-pool",
        schema=pa.schema(
            [
                pa.field("object_id", pa.string(), nullable=False),  # digest of image + mask bytes
                pa.field("source", pa.string(), nullable=False),  # dataset@version/sample_key or the image URI
                pa.field("width", pa.int32(), nullable=False),
                pa.field("height", pa.int32(), nullable=False),
                pa.field("mask_pixels", pa.int32(), nullable=False),
            ]
        ),
        files=("rgb.png", "mask.png"),  # RGB 8-bit; object mask 0/255, same size
        description="Images and object masks to propose 3D candidates for.",
    )
)

#: Candidates: N proposals per image-pool object from an ensemble, with their provenance.
#: The manifest is the candidate registry that rankings refer to (candidate_id, object_id).
CANDIDATES = register(
    DatasetSpec(
        name="candidates",
        schema=pa.schema(
            [
                pa.field("candidate_id", pa.string(), nullable=False),  # digest of object + shape + layout
                pa.field("object_id", pa.string(), nullable=False),  # image-pool object_id
                pa.field("member", pa.string(), nullable=False),  # ensemble member name
                pa.field("kind", pa.string(), nullable=False),  # "model" or "retrieval"
                pa.field("model_version", pa.string(), nullable=False),  # registry name/version or checkpoint digest
                pa.field("seed", pa.int64(), nullable=False),  # -1 for retrieval
                pa.field("guidance", _F32, nullable=False),
                pa.field("steps", pa.int32(), nullable=False),
                pa.field("retrieved_mesh_id", pa.string(), nullable=False),  # "" unless kind = retrieval
                pa.field("R", _MAT3, nullable=False),  # pose in camera frame
                pa.field("t", _VEC3, nullable=False),
                pa.field("s", _F32, nullable=False),
                pa.field("occupied_fraction", _F32, nullable=False),
            ]
        ),
        files=("occ.npy",),  # bool[r,r,r] proposed occupancy over the unit cube
        description="Ensemble proposals per object, for annotators to rank.",
    )
)
#: What the ensemble proposed, before selection: ``reward.oversample`` x N per object when a
#: reward model picks the N shown to annotators (the ``candidates``), N otherwise.
PROPOSALS = register(
    DatasetSpec(
        name="proposals",
        schema=CANDIDATES.schema,
        files=CANDIDATES.files,
        description="Every candidate the ensemble proposed per object; the candidates are selected from them.",
    )
)
PROPOSALS_PART = part_spec(PROPOSALS)

#: Ingested human (or simulated) judgements: every row of every accepted export, once per
#: submission id. Table-only (the manifest is the data); the raw exports are archived as
#: received under ``rankings/raw/<sha256>/``. Columns: flywheel.feedback.exports.NATIVE_SCHEMA.
#: R row-major (9 values), t (3), s. Variable-size lists: Parquet cannot read back fixed-size
#: lists under a null struct.
ALIGNED_POSE = pa.struct(
    [pa.field("R", pa.list_(pa.float64())), pa.field("t", pa.list_(pa.float64())), pa.field("s", pa.float64())]
)
RANKINGS = register(
    DatasetSpec(
        name="rankings",
        schema=pa.schema(
            [
                pa.field("submission_id", pa.string(), nullable=False),
                pa.field("annotator_id", pa.string(), nullable=False),
                pa.field("object_id", pa.string(), nullable=False),
                pa.field("kind", pa.string(), nullable=False),  # pairwise | best-of-n | reject-all
                pa.field("winner", pa.string()),  # null for reject-all
                pa.field("losers", pa.list_(pa.string()), nullable=False),
                pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
                # null: not recorded (a Label Studio annotation made through its API has no lead time)
                pa.field("time_spent_s", pa.float64()),
                pa.field("geometry", pa.float64()),  # optional rubric scores 0-10
                pa.field("texture", pa.float64()),
                pa.field("completeness", pa.float64()),
                pa.field("multiview_consistency", pa.float64()),
                # optional: the winner's pose as the annotator aligned it to the photo (layout target)
                pa.field("aligned_pose", ALIGNED_POSE),
                pa.field("source_file", pa.string(), nullable=False),  # sha256 of the raw export
                # 0: as first ingested; n: the submission's n-th edit (a later updated_at) superseded it
                pa.field("revision", pa.int32(), nullable=False),
            ]
        ),
        files=(),
        description="Judgements of candidates, ingested from native and Label Studio exports.",
    )
)

_DECISION_FIELDS = [
    pa.field("object_id", pa.string(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),
    pa.field("score", _F32, nullable=False),  # mean BT probability of beating the others
]

#: Accepted objects: the annotators' winner as a training target (SFT).
SFT = register(
    DatasetSpec(
        name="sft",
        schema=pa.schema(
            _DECISION_FIELDS
            + [
                pa.field("candidate_id", pa.string(), nullable=False),
                pa.field("confidence", _F32, nullable=False),  # BT probability of beating the runner-up
                pa.field("R", _MAT3, nullable=False),
                pa.field("t", _VEC3, nullable=False),
                pa.field("s", _F32, nullable=False),
                pa.field("pose_source", pa.string(), nullable=False),  # aligned (by an annotator) | candidate
            ]
        ),
        files=("rgb.png", "mask.png", "occ.npy"),
        description="Accepted winners with their input image, for supervised fine-tuning.",
    )
)

#: Preference pairs for DPO: (winner, a candidate it beat) of an accepted object.
PREFERENCES = register(
    DatasetSpec(
        name="preferences",
        schema=pa.schema(
            _DECISION_FIELDS
            + [
                pa.field("winner", pa.string(), nullable=False),
                pa.field("loser", pa.string(), nullable=False),
                pa.field("times", pa.int32(), nullable=False),  # judgements where the winner beat it
            ]
        ),
        files=("rgb.png", "mask.png", "winner.npy", "loser.npy"),
        description="Winner/loser shape pairs with their input image, for flow-DPO.",
    )
)

#: Objects every candidate of which was rejected: for 3D artists.
HARD_CASES = register(
    DatasetSpec(
        name="hard-cases",
        schema=pa.schema(
            [
                pa.field("object_id", pa.string(), nullable=False),
                pa.field("round", pa.int32(), nullable=False),
                pa.field("judgements", pa.int32(), nullable=False),
                pa.field(
                    "rejects", _F32, nullable=False
                ),  # reject votes, one per annotator (a mixed judgement: its share)
                pa.field("reject_share", _F32, nullable=False),
            ]
        ),
        files=("rgb.png", "mask.png"),
        description="Objects no candidate was acceptable for (the paper routes these to 3D artists).",
    )
)

#: Art-3DO: meshes 3D artists made for hard cases, with the photo and the pose they align to.
ART3DO = register(
    DatasetSpec(
        name="art3do",
        schema=pa.schema(
            [
                pa.field("object_id", pa.string(), nullable=False),
                pa.field("round", pa.int32(), nullable=False),  # the round that queued the case
                pa.field("source", pa.string(), nullable=False),  # the delivered mesh file
                pa.field("mesh_id", pa.string(), nullable=False),  # content digest of the normalised geometry
                pa.field("R", _MAT3, nullable=False),
                pa.field("t", _VEC3, nullable=False),
                pa.field("s", _F32, nullable=False),
                pa.field("cost", _F32, nullable=False),
            ]
        ),
        files=("rgb.png", "mask.png", "occ.npy", "mesh.npz"),
        description="Artist meshes of hard cases (normalised as every mesh, occupancy, pose), for SFT.",
    )
)
