"""The artist path: a round's hard cases queued for 3D artists in a layout people can work
from, real mesh files delivered back and imported as Art-3DO through the same mesh ingestion
as any mesh, every unusable delivery quarantined with its reason."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import BUCKET, REPO, _config, write_small_round

from flywheel.core.codecs import decode_npy, encode_png
from flywheel.core.contracts import HARD_CASES
from flywheel.core.datasets import Dataset, write_dataset
from flywheel.core.records import Sample
from flywheel.core.store import open_store
from flywheel.feedback.artists import ARTIST_README, artist_summary, deliveries_digest, read_queue
from flywheel.learning.reward import artist_pairs
from flywheel.validation.suites import validate
from rendering.mesh_library import file_sample
from rendering.meshes import MeshFilter
from sam3d_model.config import preset
from sam3d_model.model import build_model

pytestmark = pytest.mark.usefixtures("prefect_server")
WHEEL = REPO / ".cache" / "assets" / "robosuite-1.5.2-py3-none-any.whl"
MESHES = "robosuite/models/assets/objects/meshes/"
POSE = {"R": np.eye(3).tolist(), "t": [0.1, -0.2, 3.0], "s": 0.8}


def hard_cases(store, shares: dict[str, float]):
    """An image pool and a hard-cases version of its objects, with these reject shares."""
    pool, _ = write_small_round(store, sorted(shares), resolution=16)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    files = {"rgb.png": encode_png(np.full((16, 16, 3), 90, np.uint8)), "mask.png": encode_png(mask)}
    rows = [
        (o, {"object_id": o, "round": 0, "judgements": 2, "rejects": 2 * s, "reject_share": s}, files)
        for o, s in shares.items()
    ]
    return write_dataset(store, HARD_CASES, "hard-v1", rows, parents=[pool])


def deliver(folder: Path) -> None:
    """Real mesh files (robosuite's OBJ + MTL and STL assets, a trimesh GLB), good and bad."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(WHEEL) as z:
        # a textured OBJ with its MTL and texture next to it (robosuite's MTL points to ../../textures)
        (folder / "o-a.obj").write_bytes(z.read(MESHES + "bread.obj"))
        mtl = z.read(MESHES + "bread.mtl").replace(b"../../textures/bread.png", b"bread.png")
        (folder / "bread.mtl").write_bytes(mtl)
        (folder / "bread.png").write_bytes(z.read("robosuite/models/assets/textures/bread.png"))
        (folder / "o-b.stl").write_bytes(z.read(MESHES + "milk.stl"))
        (folder / "o-f.stl").write_bytes(z.read(MESHES + "can.stl"))
    trimesh.creation.box(extents=(1.0, 0.5, 0.3)).export(folder / "o-c.glb")
    (folder / "o-d.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n")  # truncated
    for oid in ("o-a", "o-b", "o-d", "o-e", "o-f"):
        (folder / f"o-{oid[-1]}.pose.json").write_text(json.dumps(POSE))
    (folder / "o-c.pose.json").write_text(json.dumps({**POSE, "R": [[1, 0, 0], [0, 2, 0], [0, 0, 1]]}))


@pytest.mark.parametrize("where", ["folder", "seaweedfs"])
def test_hard_cases_go_to_artists_and_real_deliveries_come_back_as_art3do(where, request, tmp_path):
    """Deliveries in a local folder, or under an s3:// prefix (fetched whole, sidecars too)."""
    from tasks.artists import import_art3do, queue_hard_cases
    from tasks.conventions import ensure_result_storage, store_for

    if not WHEEL.exists():
        pytest.fail(f"{WHEEL} is missing: run `bash scripts/setup.sh --test` (the README's test command does)")
    env = {}
    if where == "seaweedfs":
        env["FLYWHEEL__STORE__ENDPOINT_URL"] = request.getfixturevalue("seaweedfs").endpoint_url
        env["FLYWHEEL__STORE__REGION"] = "us-east-1"
    cfg = _config(tmp_path / "store", **env)
    ensure_result_storage(cfg)
    store = store_for(cfg)
    shares = {"o-a": 1.0, "o-b": 0.9, "o-c": 0.8, "o-d": 0.75, "o-e": 0.7, "o-f": 0.6}
    hard = hard_cases(store, shares)

    # the queue: the budget's most rejected cases, a README and a photo and mask per case
    key = queue_hard_cases(cfg, hard, "artists/s1", 0, 5, 120.0, 1)
    queued = read_queue(store, "artists/s1", 0)
    assert [t.object_id for t in queued] == ["o-a", "o-b", "o-c", "o-d", "o-e"]  # o-f: over the budget
    assert all(t.due_round == 1 and t.cost == 120.0 and t.pool.startswith("image-pool@") for t in queued)
    assert store.get_bytes("artists/s1/README.md").decode() == ARTIST_README
    for t in queued:
        assert store.exists(f"artists/s1/queue/round-0000/{t.object_id}/photo.png")
        assert store.exists(f"artists/s1/queue/round-0000/{t.object_id}/mask.png")
    before = store.get_bytes(key)
    assert queue_hard_cases(cfg, hard, "artists/s1", 0, 3, 99.0, 1) == key and store.get_bytes(key) == before

    # deliveries: two usable meshes, and one delivery per way of being unusable
    folder = tmp_path / "deliveries"
    deliver(folder)
    uri = str(folder) if where == "folder" else f"s3://{BUCKET}/deliveries-{tmp_path.name}"
    deliveries = open_store(uri, cfg.store)
    for f in folder.iterdir():
        if where != "folder":
            deliveries.put_bytes(f.name, f.read_bytes())
    digest = deliveries_digest(deliveries)
    limits = {"max_faces": 200_000, "max_file_bytes": 64 * 2**20, "max_components": 50}
    ref = import_art3do(cfg, "artists/s1", 1, uri, digest, 16, limits)
    art = Dataset(store, ref.name, ref.version)
    rows = {r["object_id"]: r for r in art.manifest().to_pylist()}
    assert sorted(rows) == ["o-a", "o-b"]
    refused = {q["item_id"].rsplit("/", 1)[-1]: q["reason"] for q in art.quarantine().to_pylist()}
    assert refused == {
        "o-c.pose.json": "bad pose",
        "o-d.ply": "unreadable",
        "o-e.pose.json": "no mesh",
        "o-f.stl": "not in the artist queue",
    }
    # the same ingestion as any mesh: the occupancy and mesh id of the file read on its own
    for oid, name in (("o-a", "o-a.obj"), ("o-b", "o-b.stl")):
        alone = file_sample(folder / name, name, 16, MeshFilter(), folder)
        assert isinstance(alone, Sample) and rows[oid]["mesh_id"] == alone.row["mesh_id"]
        sample = next(art.samples(keys=[oid]))
        assert np.array_equal(decode_npy(sample["occ.npy"]), decode_npy(alone.files["occ.npy"]))
        assert sample["rgb.png"] == store.get_bytes(f"artists/s1/queue/round-0000/{oid}/photo.png")
        assert np.allclose(rows[oid]["R"], np.eye(3).ravel()) and np.allclose(rows[oid]["t"], POSE["t"])
    assert artist_summary(queued, 1, art) == {
        "queued": 0,
        "queued_total": 5,
        "delivered": 2,
        "refused_deliveries": 4,
        "pending": 3,
        "spend": 240.0,
    }
    # the reward model's pairs: each artist mesh preferred to every candidate of its object
    pairs = list(artist_pairs(build_model(preset("micro"), 0), art, [Dataset(store, "candidates", "candidates-v1")]))
    assert sorted(oid for oid, _ in pairs) == ["o-a"] * 3 + ["o-b"] * 3
    for oid, pair in pairs:
        assert torch.equal(
            pair["winner"], torch.from_numpy(decode_npy(next(art.samples(keys=[oid]))["occ.npy"])).float()
        )
        assert not torch.equal(pair["loser"], pair["winner"]) and pair["crop"].shape[0] == 4

    # most deliveries refused is a failed gate, not a quiet pass
    report = validate(art, cfg.validation)
    assert not report.success and ("stage", "quarantined_fraction") in {(f.table, f.column) for f in report.failures}

    # unchanged deliveries: the same version; a fixed delivery: a new one
    assert import_art3do(cfg, "artists/s1", 1, uri, digest, 16, limits) == ref
    deliveries.put_bytes("o-c.pose.json", json.dumps(POSE).encode())
    fixed = import_art3do(cfg, "artists/s1", 1, uri, deliveries_digest(deliveries), 16, limits)
    assert fixed.version != ref.version and fixed.num_rows == 3


def test_flywheel_artists_check_says_what_the_next_import_would_make_of_each_delivery(tmp_path):
    """The liaison's view before a round: each delivery usable or refused with its reason, the
    cases still pending; exit 1 while any delivery would be refused, 0 once they are fixed."""
    import os
    import subprocess
    import sys

    from flywheel.rounds.ledger import series_id
    from tasks.artists import artists_base, queue_hard_cases
    from tasks.conventions import ensure_result_storage, store_for

    cfg = _config(tmp_path / "store")
    ensure_result_storage(cfg)
    hard = hard_cases(store_for(cfg), {"o-a": 1.0, "o-b": 0.9, "o-c": 0.8, "o-d": 0.75, "o-e": 0.7, "o-g": 0.5})
    queue_hard_cases(cfg, hard, artists_base(series_id(cfg)), 0, 6, 120.0, 1)
    folder = tmp_path / "deliveries"
    deliver(folder)
    env = {**os.environ, "FLYWHEEL__STORE__ROOT": str(tmp_path / "store")}

    def check():
        flywheel = str(Path(sys.executable).parent / "flywheel")
        cmd = [flywheel, "artists", "check", "--deliveries", str(folder)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)

    out = check()
    assert out.returncode == 1, out.stderr
    assert "o-c.pose.json: bad pose" in out.stdout and "o-f.stl: not in the artist queue" in out.stdout
    assert "pending  o-g (queued in round 0, due 1)" in out.stdout
    assert out.stdout.rstrip().endswith("2 usable, 4 refused, 4 pending")  # o-c, o-d, o-e, o-g
    for name in ("o-c.pose.json", "o-c.glb", "o-d.ply", "o-d.pose.json", "o-e.pose.json", "o-f.stl", "o-f.pose.json"):
        (folder / name).unlink()
    fixed = check()
    assert fixed.returncode == 0 and fixed.stdout.rstrip().endswith("2 usable, 0 refused, 4 pending"), fixed.stdout
