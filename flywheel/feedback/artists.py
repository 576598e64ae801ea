"""Hard cases -> 3D artists -> Art-3DO: the data engine's third return path.

Objects whose candidates annotators all rejected (the ``hard-cases`` dataset) are queued,
within a per-round budget, for a team of 3D artists; the meshes they deliver come back as
the ``art3do`` dataset, the highest-quality SFT data. The queue and the deliveries are plain
files a team can work from without this code (the layout below is also written to the
queue's ``README.md``); simulated artists deliver the truth of the demo world through the
same files, and every delivery goes through the same mesh ingestion as any mesh.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from flywheel.core.datasets import Dataset
from flywheel.core.store import Store
from flywheel.feedback.poses import Pose, PoseError, parse_pose

ARTIST_README = """\
# 3D artist queue

Each round's hard cases (objects no candidate was acceptable for) are in
`queue/round-NNNN/`: `tasks.jsonl` (one task per line: object_id, round queued, round due,
annotators' reject share, cost) and, per object, `<object_id>/photo.png` and
`<object_id>/mask.png` (the target object, white on black).

Deliver, per object, into the deliveries folder:

- `<object_id>.glb | .gltf | .obj | .ply | .stl`: the object's mesh in its canonical frame:
  standing upright (+z up; +y up for glTF and OBJ, as those formats have it), its longer
  horizontal extent along x. Any size and position: it is normalised like every mesh
  (centred on its bounding box, longest extent 1).
- `<object_id>.pose.json`: `{"R": [[...], [...], [...]], "t": [x, y, z], "s": scale}`, the
  normalised mesh placed in the photo's camera frame: `p_cam = R @ (s * p) + t` (OpenCV
  camera: x right, y down, z forward).

A delivery is imported at the next round; one that cannot be read (mesh or pose) is
quarantined with its reason, and the rest go on.
"""

QUEUE_FILE = "tasks.jsonl"
POSE_SUFFIX = ".pose.json"


class ArtistTask(BaseModel):
    """One hard case queued for the artists."""

    model_config = ConfigDict(frozen=True)
    object_id: str
    round: int  # the round that queued it
    due_round: int  # simulated artists deliver at the start of this round
    reject_share: float
    cost: float
    pool: str  # image-pool NAME@VERSION the object is from


class DeliveryError(ValueError):
    """A delivery that cannot be used; ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def queue_key(base: str, round_index: int, name: str = QUEUE_FILE) -> str:
    return f"{base}/queue/round-{round_index:04d}/{name}"


def pick_hard_cases(hard: pa.Table, budget: int) -> list[dict]:
    """The ``budget`` hard cases the artists get: most rejected first, then by object id (a
    fixed order, so a re-run queues the same ones)."""
    rows = sorted(hard.to_pylist(), key=lambda r: (-r["reject_share"], r["object_id"]))
    return rows[:budget]


def write_queue(
    store: Store, base: str, round_index: int, tasks: list[ArtistTask], images: dict[str, dict[str, bytes]]
) -> str:
    """Write round ``round_index``'s queue: each object's photo and mask, then the task file
    last and create-if-absent (a queue exists once its task file does; a killed write is
    redone, and a re-run never changes a queue the artists may already work from). Returns
    the task file's key."""
    if not store.exists(f"{base}/README.md"):
        store.put_bytes(f"{base}/README.md", ARTIST_README.encode())
    key = queue_key(base, round_index)
    if not store.exists(key):
        for task in tasks:
            image = images[task.object_id]
            for name, file in (("photo.png", "rgb.png"), ("mask.png", "mask.png")):
                store.put_bytes(queue_key(base, round_index, f"{task.object_id}/{name}"), image[file])
        store.create_if_absent(key, "".join(t.model_dump_json() + "\n" for t in tasks).encode())
    return key


def read_queue(store: Store, base: str, upto_round: int) -> list[ArtistTask]:
    """Every task queued in rounds 0..``upto_round``, in round order."""
    tasks = []
    for k in range(upto_round + 1):
        key = queue_key(base, k)
        if store.exists(key):
            tasks += [
                ArtistTask.model_validate_json(line) for line in store.get_bytes(key).decode().splitlines() if line
            ]
    return tasks


def read_pose(data: bytes, name: str) -> Pose:
    """A delivered pose file, checked (:func:`flywheel.feedback.poses.parse_pose`)."""
    try:
        return parse_pose(data)
    except PoseError as e:
        raise DeliveryError("bad pose", f"{name}: {e}") from None


def deliveries_by_object(names: list[str], mesh_suffixes: set[str]) -> dict[str, dict[str, str]]:
    """Delivered top-level file names -> {object_id: {"mesh": name, "pose": name}} (either may
    be missing). Other files (an OBJ's material and textures) are the meshes' sidecars; two
    meshes for one object: the first by name counts."""
    found: dict[str, dict[str, str]] = {}
    for name in sorted(n for n in names if "/" not in n):
        if name.endswith(POSE_SUFFIX):
            found.setdefault(name[: -len(POSE_SUFFIX)], {})["pose"] = name
            continue
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix.lower()}" in mesh_suffixes:
            found.setdefault(stem, {}).setdefault("mesh", name)
    return found


def artist_summary(queued: list[ArtistTask], round_index: int, art3do: Dataset) -> dict[str, float]:
    """The artist path of a round: cases queued this round and so far, meshes delivered and
    usable (Art-3DO rows), deliveries refused, cases still pending, and the spend so far."""
    delivered = set(art3do.manifest().column("object_id").to_pylist())
    refused = art3do.quarantine().num_rows
    return {
        "queued": sum(t.round == round_index for t in queued),
        "queued_total": len(queued),
        "delivered": len(delivered),
        "refused_deliveries": refused,
        "pending": sum(t.object_id not in delivered for t in queued),
        "spend": float(sum(t.cost for t in queued if t.object_id in delivered)),
    }


def deliveries_digest(store: Store) -> str:
    """A digest of everything delivered now (names and bytes): new or changed deliveries make a
    new Art-3DO version, never a stale cache hit."""
    h = hashlib.sha256()
    for info in sorted(store.list(""), key=lambda i: i.key):
        h.update(info.key.encode() + b"\0" + hashlib.sha256(store.get_bytes(info.key)).digest())
    return h.hexdigest()


def true_meshes(store: Store, pool: str, object_ids: list[str]) -> dict[str, tuple[bytes, Pose]]:
    """What simulated artists know: for image-pool objects that came from Flying Occlusions,
    the occludee's normalised mesh (``mesh.npz`` of its library) and its pose."""
    name, _, version = pool.partition("@")
    rows = [r for r in Dataset(store, name, version).manifest().select(["object_id", "source"]).to_pylist()]
    wanted: dict[str, dict[str, str]] = {}
    for r in rows:
        spec, _, key = r["source"].partition("/")
        if r["object_id"] in object_ids and spec.startswith("occlusions@") and key:
            wanted.setdefault(spec.partition("@")[2], {})[key] = r["object_id"]
    out: dict[str, tuple[bytes, Pose]] = {}
    for fo_version, keys in wanted.items():
        fo = Dataset(store, "occlusions", fo_version)
        libraries = [p["version"] for p in fo.marker.get("parents", []) if p["name"] == "meshes"]
        meshes: dict[str, bytes] = {}
        fo_rows = [r for r in fo.manifest().to_pylist() if r["sample_key"] in keys]
        needed = {r["occludee_id"] for r in fo_rows}
        for library in libraries:
            for sample in Dataset(store, "meshes", library).samples(keys=sorted(needed - set(meshes))):
                meshes[sample["__key__"]] = sample["mesh.npz"]
        for r in fo_rows:
            if r["occludee_id"] in meshes:
                pose = Pose(
                    np.asarray(r["occludee_R"], float).reshape(3, 3),
                    np.asarray(r["occludee_t"], float),
                    float(r["occludee_s"]),
                )
                out[keys[r["sample_key"]]] = (meshes[r["occludee_id"]], pose)
    return out


def pose_json(pose: Pose) -> bytes:
    return json.dumps(pose.as_dict(), indent=1).encode()
