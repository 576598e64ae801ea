"""Candidate proposals: the ensemble (model members + retrieval) and its Ray actors, with the
micro model on the toy task, and model references through a real MLflow registry."""

from __future__ import annotations

import io
import json
import os
import signal

import numpy as np
import pytest
import torch

from flywheel.core.config import load_config
from flywheel.learning.serving import ProposalJob, ProposalPool
from flywheel.learning.toy import toy_examples
from flywheel.tracking import lineage
from flywheel.tracking.registry import ModelNotFound, register_checkpoint, resolve_model
from sam3d_model import train as T
from sam3d_model.checkpoint import save_checkpoint
from sam3d_model.config import preset
from sam3d_model.data import batch_stream, collate
from sam3d_model.ensemble import DEFAULT_MEMBERS, MeshIndex, propose
from sam3d_model.model import SmallSam3D

CFG = preset("micro")


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A briefly trained micro model and its checkpoint file."""
    torch.manual_seed(0)
    examples = toy_examples(CFG, 8)
    model = SmallSam3D(CFG)
    batches = batch_stream(lambda: examples, 8)
    T.train_vae(model, batches, T.TrainSettings(steps=30, lr=5e-3, log_every=10))
    T.sft(model, batches, T.TrainSettings(steps=60, lr=3e-3, log_every=20))
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "champion.pt", model)
    return model, path, examples


def library(examples):
    return [f"mesh-{i}" for i in range(len(examples))], np.stack([e["occupancy"].numpy() > 0.5 for e in examples])


def test_ensemble_gives_n_distinct_candidates_with_provenance(champion):
    model, _, examples = champion
    ids, occ = library(examples)
    objects = [f"obj-{i}" for i in range(3)]
    batch = collate(examples[:3])
    members = tuple(m for m in DEFAULT_MEMBERS if m.model == "champion")  # no earlier champion yet
    out = propose(
        {"champion": (model, "sam3d/1")},
        members,
        objects,
        batch,
        num_candidates=8,
        index={"champion": MeshIndex(model, ids, occ)},
    )
    for oid in objects:
        cands = out[oid]
        assert len(cands) == 8 and len({c.candidate_id for c in cands}) == 8
        assert {c.member for c in cands} == {"champion", "champion-strong-cfg", "retrieval"}
        retrieved = [c for c in cands if c.kind == "retrieval"]
        assert len(retrieved) == 2 and all(c.retrieved_mesh_id in ids and c.seed == -1 for c in retrieved)
        assert all(c.model_version == "sam3d/1" for c in cands)
        row = cands[0].row()
        assert np.allclose(np.array(row["R"]).reshape(3, 3) @ np.array(row["R"]).reshape(3, 3).T, np.eye(3), atol=1e-5)
    again = propose(
        {"champion": (model, "sam3d/1")},
        members,
        objects,
        batch,
        num_candidates=8,
        index={"champion": MeshIndex(model, ids, occ)},
    )
    assert [c.candidate_id for c in again["obj-0"]] == [c.candidate_id for c in out["obj-0"]]


def test_retrieval_finds_the_library_shape_it_is_shown(champion):
    model, _, examples = champion
    ids, occ = library(examples)
    index = MeshIndex(model, ids, occ)
    with torch.no_grad():
        query = model.encode_shape(torch.from_numpy(occ[[2, 5]]).float())
    assert [hits[0] for hits in index.nearest(query, 3)] == [2, 5]


def test_duplicates_are_topped_up_from_further_seeds(champion):
    model, _, examples = champion
    from sam3d_model.ensemble import Member

    same_seed = (Member(name="a", seeds=(0,)), Member(name="b", seeds=(0,)))  # b duplicates a exactly
    out = propose({"champion": (model, "v")}, same_seed, ["o"], collate(examples[:1]), num_candidates=3)
    assert len(out["o"]) == 3 and [c.member for c in out["o"]] == ["a", "a", "a"]
    assert [c.seed for c in out["o"]] == [0, 10_000, 10_001]


def test_ray_actors_survive_a_killed_actor_without_losing_or_duplicating(champion):
    model, path, examples = champion
    jobs = [
        ProposalJob(f"batch-{i}", [f"obj-{2 * i}", f"obj-{2 * i + 1}"], collate(examples[2 * i : 2 * i + 2]))
        for i in range(4)
    ]
    members = DEFAULT_MEMBERS[:2]
    with ProposalPool({"champion": (str(path), "sam3d/1")}, members, num_candidates=6, actors=2) as pool:
        clean = {r.id: r for r in pool.run(jobs)}
        victim = pool.actor_pids()[0]
        os.kill(victim, signal.SIGKILL)
        after = {r.id: r for r in pool.run(jobs)}
        assert victim not in pool.actor_pids()  # replaced
    assert set(clean) == set(after) == {j.id for j in jobs}
    for job in jobs:
        assert clean[job.id].ok and after[job.id].ok
        for oid in job.object_ids:
            ids = [c.candidate_id for c in after[job.id].candidates[oid]]
            assert len(ids) == len(set(ids)) == 6
            assert ids == [c.candidate_id for c in clean[job.id].candidates[oid]]  # same ids on any actor


def test_model_references_resolve_through_the_registry(champion, tmp_path):
    _, path, _ = champion
    cfg = load_config(environ={"FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state")})
    import mlflow

    experiment = lineage.configure(cfg)
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    registered = register_checkpoint(cfg, path, run_id=run_id, name="sam3d-test", aliases=("champion",))
    resolved = resolve_model(cfg, "models:/sam3d-test@champion")
    assert resolved.label == registered.label == "sam3d-test/1"
    assert resolved.sha256 == registered.sha256 and resolved.path.read_bytes() == path.read_bytes()
    assert resolve_model(cfg, "models:/sam3d-test/1").path == resolved.path
    assert resolve_model(cfg, str(path)).label.startswith("file:")
    for ref, message in [
        ("models:/sam3d-test@nobody", "not in the registry"),
        ("models:/sam3d-test/7", "not in the registry"),
        ("models:/other@champion", "not in the registry"),
        (str(tmp_path / "x.pt"), "no such checkpoint"),
        ("models:/bad", "use models:/NAME@ALIAS"),
    ]:
        with pytest.raises(ModelNotFound, match=message):
            resolve_model(cfg, ref)


def test_a_registered_version_loads_as_an_mlflow_model_that_predicts_from_images(champion, tmp_path):
    """What a data scientist does: ``mlflow.pyfunc.load_model("models:/NAME@champion")`` and
    ``predict`` on an image and a mask -> shape and layout; the version says what it is."""
    import io

    import mlflow
    import pandas as pd
    from PIL import Image

    model, path, _ = champion
    cfg = load_config(environ={"FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state")})
    experiment = lineage.configure(cfg)
    run_id = mlflow.MlflowClient().create_run(experiment, run_name="train-sft").info.run_id
    register_checkpoint(
        cfg,
        path,
        run_id=run_id,
        name="sam3d-pyfunc",
        aliases=("champion",),
        metadata={"preset": "micro"},
        description="round 0 challenger",
    )
    version = mlflow.MlflowClient().get_model_version_by_alias("sam3d-pyfunc", "champion")
    assert version.run_id == run_id and version.description == "round 0 challenger"

    loaded = mlflow.pyfunc.load_model("models:/sam3d-pyfunc@champion")
    meta = loaded.metadata
    assert meta.metadata["preset"] == "micro" and meta.metadata["architecture"]["width"] == model.cfg.width
    assert {c.name for c in meta.get_input_schema().inputs} == {"image", "mask"}
    assert {c.name for c in meta.get_output_schema().inputs} >= {"occupancy", "rotation", "translation", "scale"}
    assert meta.saved_input_example_info is not None

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(0)
    images, masks = [], []
    for size in (48, 80):  # any image size: the model crops around the mask
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4 : size // 2, size // 3 : 2 * size // 3] = 255
        images.append(png((rng.random((size, size, 3)) * 255).astype(np.uint8)))
        masks.append(png(mask))
    frame = pd.DataFrame({"image": images, "mask": masks})
    out = loaded.predict(frame)
    r = model.cfg.resolution
    assert len(out) == 2 and list(out["resolution"]) == [r, r]
    assert all(len(o) == r**3 and set(o) <= {0, 1} for o in out["occupancy"])
    assert all(len(x) == 9 for x in out["rotation"]) and all(len(t) == 3 for t in out["translation"])
    rotation = np.asarray(out["rotation"][0]).reshape(3, 3)
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)  # a rotation
    again = loaded.predict(frame)
    assert list(again["occupancy"]) == list(out["occupancy"])  # the same seed, the same answer
    with pytest.raises(Exception, match="row 1: mask is not a readable image"):
        loaded.predict(pd.DataFrame({"image": images, "mask": [masks[0], b"not an image"]}))


def test_image_pool_manifest_quarantines_each_bad_item_and_keeps_the_rest(tmp_path):
    from PIL import Image

    from flywheel.core.config import StoreConfig
    from flywheel.core.records import Rejected, Sample
    from flywheel.feedback.image_pool import from_manifest

    rgb = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    mask = np.zeros((24, 32), np.uint8)
    mask[5:15, 8:20] = 255
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a-mask.png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "empty-mask.png")
    Image.fromarray(mask[:10]).save(tmp_path / "small-mask.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    big = (np.random.default_rng(1).random((200, 200, 3)) * 255).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    lines = [
        '{"image": "a.png", "mask": "a-mask.png", "object_id": "mine"}',
        '{"image": "gone.png", "mask": "a-mask.png"}',
        '{"image": "broken.png", "mask": "a-mask.png"}',
        '{"image": "a.png", "mask": "small-mask.png"}',
        '{"image": "a.png", "mask": "empty-mask.png"}',
        '{"image": "a.png"}',
        "not json",
        '{"image": "big.png", "mask": "a-mask.png"}',
    ]
    manifest = tmp_path / "pool.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    items = list(from_manifest(manifest, StoreConfig(), max_bytes=50_000))
    assert [type(i).__name__ for i in items].count("Sample") == 1
    sample = next(i for i in items if isinstance(i, Sample))
    assert sample.key == "mine" and sample.row["mask_pixels"] == 120
    reasons = {i.item_id: i.reason for i in items if isinstance(i, Rejected)}
    assert reasons == {
        "pool.jsonl:2": "missing image",
        "pool.jsonl:3": "unreadable image",
        "pool.jsonl:4": "mask size",
        "pool.jsonl:5": "empty mask",
        "pool.jsonl:6": "malformed row",
        "pool.jsonl:7": "malformed row",
        "pool.jsonl:8": "file too large",
    }
    assert all("pool.jsonl" in i.detail for i in items if isinstance(i, Rejected))  # each reason names the row


def test_annotation_files_validate_against_their_schemas():
    import jsonschema

    from flywheel.feedback import annotation

    task = {
        "task_id": "v/obj",
        "object_id": "obj",
        "candidates_dataset": "candidates@v",
        "image": "s3://b/i.png",
        "mask": "s3://b/m.png",
        "sheet": "s3://b/s.png",
        "kinds": ["pairwise", "best-of-n", "reject-all"],
        "candidates": [
            {"candidate_id": f"cand-{i:020x}", "preview": f"s3://b/{i}.png", "member": "champion"} for i in range(3)
        ],
    }
    text = annotation.native_tasks([task])
    assert text.count("\n") == 1
    ids = [c["candidate_id"] for c in task["candidates"]]
    pairs = annotation.label_studio_tasks("pairwise", [task])
    assert len(pairs) == 3 and {p["data"]["left_id"] for p in pairs} <= set(ids)
    ranking = annotation.label_studio_tasks("ranking", [task], url=lambda u: u.replace("s3://b/", "https://h/"))
    assert sorted(i["id"] for i in ranking[0]["data"]["items"]) == ids
    assert [i["title"] for i in ranking[0]["data"]["items"]] == ["Candidate 1", "Candidate 2", "Candidate 3"]
    assert ranking[0]["data"]["image"] == "https://h/i.png"
    best = annotation.label_studio_tasks("best-of-n", [task])[0]["data"]["options"]
    assert sorted(o["value"] for o in best[:-1]) == ids and best[-1] == {"value": "None acceptable"}

    # eight candidates, the first four the champion's: a ring of 8 pairs (not 28), each candidate
    # in two; neither the order nor any text says which model made a candidate
    many = dict(task, candidates=[dict(task["candidates"][0], candidate_id=f"cand-{i:020x}") for i in range(8)])
    for i, c in enumerate(many["candidates"]):
        c["member"] = "champion" if i < 4 else "retrieval"
    ring = [p["data"] for p in annotation.label_studio_tasks("pairwise", [many])]
    seen = [d["left_id"] for d in ring] + [d["right_id"] for d in ring]
    assert len(ring) == 8 and all(seen.count(c["candidate_id"]) == 2 for c in many["candidates"])
    champions = {c["candidate_id"] for c in many["candidates"][:4]}
    assert 0 < sum(d["left_id"] in champions for d in ring) < 8
    shown = [i["id"] for i in annotation.label_studio_tasks("ranking", [many])[0]["data"]["items"]]
    assert shown != [c["candidate_id"] for c in many["candidates"]]
    for kind in ("pairwise", "ranking", "best-of-n"):
        text = json.dumps(annotation.label_studio_tasks(kind, [many]))
        assert "champion" not in text and "retrieval" not in text
    with pytest.raises(jsonschema.ValidationError):
        annotation.native_tasks([dict(task, candidates=task["candidates"][:1])])  # fewer than 2
    with pytest.raises(jsonschema.ValidationError):
        annotation.native_tasks([dict(task, extra="field")])


def test_an_unresolvable_model_costs_only_the_members_that_use_it(champion, tmp_path):
    import json

    from flywheel.learning.ensemble import EARLIER_CHAMPION, resolve_ensemble
    from sam3d_model.ensemble import Member

    _, path, _ = champion
    cfg = load_config(
        environ={
            "FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state"),
            "FLYWHEEL__CANDIDATES__MODELS": json.dumps({"champion": str(path), "old": "models:/sam3d-none/3"}),
        }
    )
    members = [
        Member(name="champion", seeds=(0, 1)),
        Member(name="old-seeds", model="old"),
        Member(name="ghost", model="not-configured"),
    ]
    models, kept, dropped = resolve_ensemble(cfg, [m.model_dump(mode="json") for m in members])
    assert set(models) == {"champion"} and models["champion"].label.startswith("file:")
    assert [m["name"] for m in kept] == ["champion"]
    assert {(d["item_id"], d["reason"]) for d in dropped} == {
        ("old-seeds", "unknown model"),
        ("ghost", "unknown model"),
    }
    assert all("sam3d-none" in d["detail"] or "not-configured" in d["detail"] for d in dropped)
    with pytest.raises(ModelNotFound, match="no ensemble member has a usable model"):
        resolve_ensemble(cfg, [members[1].model_dump(mode="json")])

    # the earlier champion's member sits out (no quarantine row) until a round names that model
    earlier = Member(name="earlier-champion", model=EARLIER_CHAMPION).model_dump(mode="json")
    models, kept, dropped = resolve_ensemble(cfg, [members[0].model_dump(mode="json"), earlier])
    assert [m["name"] for m in kept] == ["champion"] and dropped == []
    named = cfg.model_copy(
        update={
            "candidates": cfg.candidates.model_copy(
                update={"models": {"champion": str(path), EARLIER_CHAMPION: str(path)}}
            )
        }
    )
    models, kept, dropped = resolve_ensemble(named, [members[0].model_dump(mode="json"), earlier])
    assert [m["name"] for m in kept] == ["champion", "earlier-champion"] and set(models) == {
        "champion",
        EARLIER_CHAMPION,
    }


def test_image_pool_manifest_reads_s3_uris(moto, tmp_path):
    from conftest import BUCKET, s3_store_config
    from PIL import Image

    from flywheel.core.codecs import encode_png
    from flywheel.core.records import Sample
    from flywheel.core.store import S3Store
    from flywheel.feedback.image_pool import from_manifest

    config = s3_store_config(moto, f"s3://{BUCKET}")
    store = S3Store(f"s3://{BUCKET}", config)
    rgb = np.full((16, 16, 3), 90, np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:10, 4:10] = True
    store.put_bytes("pool/a.png", encode_png(rgb))
    store.put_bytes("pool/a-mask.png", encode_png(mask.astype(np.uint8) * 255))
    manifest = tmp_path / "pool.csv"
    manifest.write_text(
        f"image,mask\ns3://{BUCKET}/pool/a.png,s3://{BUCKET}/pool/a-mask.png\n"
        f"s3://{BUCKET}/pool/missing.png,s3://{BUCKET}/pool/a-mask.png\n"
    )
    items = list(from_manifest(manifest, config, max_bytes=10_000))
    assert isinstance(items[0], Sample) and items[0].row["mask_pixels"] == 36
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(items[0].files["rgb.png"]))), rgb)
    assert (items[1].item_id, items[1].reason) == ("pool.csv:3", "missing image")


def test_an_ensemble_of_two_model_versions_names_each_in_its_candidates(champion):
    from sam3d_model.ensemble import Member

    model, _, examples = champion
    earlier = SmallSam3D(CFG)  # stands in for an older registered version
    earlier.load_state_dict(model.state_dict())
    torch.nn.init.normal_(earlier.flow.shape_out.proj.weight, std=0.5)  # it proposes differently
    members = (Member(name="champion", seeds=(0, 1)), Member(name="previous", model="previous", seeds=(0, 1)))
    out = propose(
        {"champion": (model, "sam3d/2"), "previous": (earlier, "sam3d/1")},
        members,
        ["o"],
        collate(examples[:1]),
        num_candidates=4,
    )
    assert [(c.member, c.model_version) for c in out["o"]] == [
        ("champion", "sam3d/2"),
        ("champion", "sam3d/2"),
        ("previous", "sam3d/1"),
        ("previous", "sam3d/1"),
    ]
