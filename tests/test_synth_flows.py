"""The synthetic-data flows for real: Prefect flow runs, a Ray actor pool, Blender workers,
MLflow lineage; tiny renders (configs/test.yaml)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import MICRO_CANDIDATES, Made, _config, cli_env  # noqa: F401  (shared with the fixtures)

from flywheel.core.config import load_config
from flywheel.core.datasets import Dataset, list_versions
from flywheel.core.store import LocalStore
from flywheel.tracking import lineage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _session_mlflow():
    """The session fixtures' runs are in the session's MLflow store; a test elsewhere may have
    pointed MLflow at its own (MLflow's tracking URI is process-wide)."""
    lineage.configure(load_config())


def _store_env(monkeypatch, root: Path) -> LocalStore:
    monkeypatch.setenv("FLYWHEEL__STORE__ROOT", str(root))
    return LocalStore(root)


def test_demo_round_end_to_end_then_rerun_from_cache(synthetic: Made):
    from flows.synth import synth_all as demo_round

    result = synthetic.result
    meshes, iso, fo = (synthetic.dataset(name) for name in ("meshes", "iso3do", "occlusions"))

    assert meshes.ref.num_rows == 5 and meshes.quarantine().num_rows == 0
    m = iso.manifest()
    assert iso.ref.num_rows == 5 * 2  # 5 objects x 2 views
    assert sorted(set(m.column("object_id").to_pylist())) == sorted(meshes.manifest().column("mesh_id").to_pylist())
    assert iso.marker["parents"][0]["version"] == meshes.ref.version
    R = np.array(m.column("R").to_pylist()).reshape(-1, 3, 3)
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert min(m.column("mask_pixels").to_pylist()) > 0
    sample = next(iso.samples())
    depth = np.load(__import__("io").BytesIO(sample["depth.npy"]))
    assert depth.shape == (32, 32) and depth.max() > 0

    quarantined = fo.quarantine().to_pylist()
    assert fo.ref.num_rows + len(quarantined) == 3  # every FO sample accounted for
    vf = fo.manifest().column("visible_fraction").to_pylist()
    assert all(0.25 <= v <= 0.85 for v in vf)  # band (0.3, 0.8), measured on the final render
    assert iso.verify() == [] and fo.verify() == []

    client = mlflow.MlflowClient()
    stages = lineage.stage_runs(result.mlflow_run_id)
    # the held-out sets' libraries (the "real" world's, the synthetic world's) come first: the
    # library to train on is built without their meshes, and records them as its parents
    assert [r.data.tags[lineage.STAGE_TAG] for r in stages] == ["mesh-library", "validate-meshes"] * 3 + [
        "iso3do",
        "validate-iso3do",
        "occlusions",
        "validate-occlusions",
    ]
    held_out = [Dataset(synthetic.store, "meshes", p["version"]) for p in meshes.marker["parents"]]
    assert [d.ref.num_rows for d in held_out] == [4, 2]  # rounds.eval_meshes, rounds.synthetic_eval_objects
    assert {(d["name"], d["context"]) for d in lineage.run_datasets(stages[4].info.run_id)} == {
        ("meshes", "input"),
        ("meshes", "output"),
    }
    stages = stages[4:]
    for run, sheet in zip(stages[::2], ["meshes_sheet.png", "iso3do_sheet.png", "occlusions_sheet.png"]):
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [sheet]
    for run in stages[1::2]:  # every dataset passed its gate, with JSON and Data Docs logged
        assert run.data.tags["validation.success"] == "true"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"validation.json", "data_docs"}
    iso_run = stages[2]
    assert {(d["name"], d["context"]) for d in lineage.run_datasets(iso_run.info.run_id)} == {
        ("meshes", "input"),
        ("iso3do", "output"),
    }
    assert iso_run.data.metrics["rows"] == 10 and iso_run.data.params["views"] == "2"
    assert "tries_per_accepted" in stages[4].data.metrics or fo.ref.num_rows == 0

    again = demo_round(config=synthetic.cfg)
    assert again.datasets == result.datasets
    assert lineage.stage_runs(again.mlflow_run_id) == []  # every task was a cache hit


def test_model_trains_on_the_rounds_renders_and_logs_to_mlflow(synthetic: Made, tmp_path):
    """The model's data path on real renders: Iso-3DO views and FO composites decode into
    examples with the manifest's poses; the training stages log params, per-step losses
    and learning curves to the given MLflow run."""
    import torch

    from flywheel.core.config import load_config
    from flywheel.learning.examples import cached_examples
    from flywheel.tracking.training_log import MlflowTrainLog
    from sam3d_model import train as T
    from sam3d_model.config import preset
    from sam3d_model.data import batch_stream
    from sam3d_model.model import SmallSam3D

    cfg = preset("micro")
    iso, fo = synthetic.dataset("iso3do"), synthetic.dataset("occlusions")
    iso_examples = cached_examples(cfg, [iso])
    assert len(iso_examples) == iso.ref.num_rows
    rows = {r["sample_key"]: r for r in iso.manifest().to_pylist()}
    first_key = next(iso.samples())["__key__"]
    first = iso_examples[0]
    assert first["crop"].shape == (4, 32, 32) and not first["full_valid"]
    assert torch.allclose(first["rotation"].flatten(), torch.tensor(rows[first_key]["R"]), atol=1e-6)
    assert first["crop"][3].mean() > 3 * first["full"][3].mean()  # the crop zooms in on the mask
    fo_examples = cached_examples(cfg, [fo])
    assert len(fo_examples) == fo.ref.num_rows and all(e["full_valid"] for e in fo_examples)

    flywheel_cfg = load_config()
    experiment = lineage.configure(flywheel_cfg)
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment, run_name="model-on-renders").info.run_id
    model = SmallSam3D(cfg)
    settings = T.TrainSettings(steps=6, log_every=2)
    T.train_vae(
        model, batch_stream(lambda: iso_examples, 4), settings, calibration_batches=2, checkpoint_dir=tmp_path / "vae"
    )
    T.pretrain(
        model,
        batch_stream(lambda: iso_examples, 4),
        settings,
        log_to=MlflowTrainLog(run_id),
        params={"dataset": str(iso.ref)},
    )
    if fo_examples:
        T.midtrain(model, batch_stream(lambda: fo_examples, 2), settings.model_copy(update={"steps": 2}))
    client.set_terminated(run_id)
    run = client.get_run(run_id)
    assert run.data.params["stage"] == "pretrain" and run.data.params["dataset"] == str(iso.ref)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [2, 4, 6]
    assert "translation" in run.data.metrics and "grad_norm" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id, "curves")] == ["curves/pretrain_curves.png"]
    assert (tmp_path / "vae" / "last.pt").is_file()


def test_propose_flow_on_the_rounds_composites(synthetic: Made, proposed: Made):
    """propose: FO composites as the image pool -> N candidates per object from a micro
    checkpoint (2 seeds + 2 retrieved meshes) on Ray -> gates -> previews and annotation
    files; a re-run reuses every task and gives the same candidate ids."""
    import jsonschema

    from flows.propose import propose
    from flywheel.feedback import annotation

    store, result = proposed.store, proposed.result
    pool, cands = proposed.dataset("image-pool"), proposed.dataset("candidates")
    fo = synthetic.dataset("occlusions")
    assert pool.ref.num_rows == fo.ref.num_rows > 0
    rows = cands.manifest().to_pylist()
    by_object = {}
    for r in rows:
        by_object.setdefault(r["object_id"], []).append(r)
    assert set(by_object) == set(pool.manifest().column("object_id").to_pylist())
    assert all(len(c) == 4 and len({r["candidate_id"] for r in c}) == 4 for c in by_object.values())
    assert {r["kind"] for r in rows} == {"model", "retrieval"}
    assert all(r["model_version"].startswith("file:") for r in rows)
    # without a reward model every proposal is shown: the candidates are the proposals
    proposals = Dataset(store, "proposals", cands.marker["parents"][0]["version"])
    assert cands.marker["parents"][0]["name"] == "proposals" and cands.verify() == []
    assert sorted(proposals.manifest().column("candidate_id").to_pylist()) == sorted(r["candidate_id"] for r in rows)
    assert "image-pool" in {p["name"] for p in cands.marker["parents"]}

    stages = [r.data.tags[lineage.STAGE_TAG] for r in lineage.stage_runs(result.mlflow_run_id)]
    assert stages == [
        "image-pool",
        "validate-image-pool",
        "proposals",
        "validate-proposals",
        "candidates",
        "validate-candidates",
        "annotation-tasks",
    ]
    prefix = f"annotation/{cands.ref.version}"
    tasks = [json.loads(line) for line in store.get_bytes(f"{prefix}/tasks.jsonl").decode().splitlines()]
    assert sorted(t["object_id"] for t in tasks) == sorted(by_object)
    for t in tasks:
        jsonschema.validate(t, annotation.TASK_SCHEMA)
        assert store.exists(f"{prefix}/sheets/{t['object_id']}.png")
        assert [c["candidate_id"] for c in t["candidates"]] == [r["candidate_id"] for r in by_object[t["object_id"]]]
    for kind, schema in annotation.LABEL_STUDIO_SCHEMAS.items():
        jsonschema.validate(json.loads(store.get_bytes(f"{prefix}/label_studio_{kind}.json")), schema)

    again = propose(config=proposed.cfg)
    assert again.datasets == result.datasets
    assert lineage.stage_runs(again.mlflow_run_id) == []


def test_rankings_flow_from_simulated_annotators(proposed: Made, tmp_path):
    """Simulated annotators judge the proposed candidates against the composites' ground
    truth and write a JSONL and a CSV export (one row malformed, one from an intruder) and
    an oversized file; ingestion quarantines those three (the gate stops on the file that
    gave nothing until overridden), decisions give SFT / DPO / hard-case
    datasets; ingesting the same files again changes nothing."""
    import json

    from flows.rankings import rankings
    from flywheel.feedback.simulate import (
        SimulatedAnnotator,
        candidate_records,
        simulate,
        truths_for_pool,
    )

    store = proposed.store
    pool, cands = proposed.dataset("image-pool").ref, proposed.dataset("candidates").ref
    truths = truths_for_pool(store, pool)
    candidates = candidate_records(store, cands)
    assert set(truths) == set(candidates)
    team = [
        SimulatedAnnotator("ann-1"),
        SimulatedAnnotator("ann-2", noise=0.05, pairs_per_object=4),
        SimulatedAnnotator("ann-3", reject_threshold=2.0),
    ]  # rejects everything it sees
    rows = simulate(team, candidates, truths, per_object=2, seed=1)
    native = tmp_path / "batch-1.jsonl"
    native.write_text(
        "\n".join(json.dumps(r) for r in rows[: len(rows) // 2])
        + "\n{broken\n"
        + json.dumps({**rows[0], "submission_id": "x", "annotator_id": "intruder"})
        + "\n"
    )
    studio = tmp_path / "batch-2.csv"
    pd.DataFrame(rows[len(rows) // 2 :]).assign(losers=lambda f: f["losers"].str.join(";")).to_csv(studio, index=False)
    big = tmp_path / "too-big.jsonl"
    big.write_text((json.dumps(rows[0]) + "\n") * 8000)  # > 1 MB
    env = {
        "FLYWHEEL__RANKINGS__ANNOTATORS": json.dumps(["ann-1", "ann-2", "ann-3"]),
        "FLYWHEEL__RANKINGS__MAX_FILE_MB": "1",
    }
    # the oversized file yields no judgement: the gate stops the round until someone looks
    with pytest.raises(Exception, match=r"files\[usable\]"):
        rankings(
            [str(native), str(studio), str(big)], candidates=cands.version, config=_config(Path(store.root), **env)
        )
    env["FLYWHEEL__VALIDATION__OVERRIDES"] = json.dumps({"rankings": "too-big.jsonl is too big on purpose"})
    cfg = _config(Path(store.root), **env)

    result = rankings([str(native), str(studio), str(big)], candidates=cands.version, config=cfg)
    judged = Dataset(store, "rankings", result.datasets[0].version)
    assert judged.ref.num_rows == len(rows)
    assert sorted(judged.quarantine()["reason"].to_pylist()) == ["file too large", "malformed row", "unknown annotator"]
    raw = [o.key for o in store.list("rankings/raw/")]
    assert len(raw) == 3 and store.get_bytes(next(k for k in raw if k.endswith("batch-1.jsonl"))) == native.read_bytes()
    outputs = {d.name: Dataset(store, d.name, d.version) for d in result.datasets[1:]}
    assert set(outputs) == {"sft", "preferences", "hard-cases"}
    sft, prefs, hard = outputs["sft"], outputs["preferences"], outputs["hard-cases"]
    assert sft.ref.num_rows + hard.ref.num_rows <= len(candidates)
    assert all(
        r["winner"] in {c["candidate_id"] for c in candidates[r["object_id"]]} for r in prefs.manifest().to_pylist()
    )
    stages = [r.data.tags[lineage.STAGE_TAG] for r in lineage.stage_runs(result.mlflow_run_id)]
    # the re-run after the gate failed continues the same round run: its stages follow the first ones
    last = len(stages) - 1 - stages[::-1].index("ingest-rankings")
    assert stages[:2] == ["ingest-rankings", "validate-rankings"]
    assert stages[last : last + 3] == ["ingest-rankings", "validate-rankings", "decide"]
    decide_run = lineage.stage_runs(result.mlflow_run_id)[last + 2]
    assert "accept_rate" in decide_run.data.metrics
    assert "rankings/rankings_report.png" in [
        a.path for a in mlflow.MlflowClient().list_artifacts(decide_run.info.run_id, "rankings")
    ]

    again = rankings([str(native), str(studio), str(big)], candidates=cands.version, config=cfg)
    assert again.datasets == result.datasets
    assert len(list(store.list("rankings/raw/"))) == 3

    # a later export that resubmits an ingested id with other contents: quarantined, not counted
    changed = tmp_path / "batch-3.jsonl"
    first = next(r for r in judged.manifest().to_pylist() if r["kind"] != "reject-all")
    changed.write_text(
        json.dumps(
            {
                **{k: first[k] for k in ("submission_id", "annotator_id", "object_id", "kind")},
                "winner": first["losers"][0],
                "losers": [first["winner"]] + first["losers"][1:],
                "timestamp": first["timestamp"].isoformat(),
                "time_spent_s": 9.0,
            }
        )
        + "\n"
    )
    later = rankings([str(changed)], candidates=cands.version, round_index=1, config=cfg)
    updated = Dataset(store, "rankings", later.datasets[0].version)
    assert updated.ref.num_rows == judged.ref.num_rows
    assert updated.quarantine()["reason"].to_pylist().count("conflicting resubmission") == 1

    # the report people run: what came in, what was quarantined, and round 0's decisions again
    cli_env = {**os.environ, "FLYWHEEL__STORE__ROOT": str(store.root), **env}
    report = subprocess.run(
        [
            str(BIN / "flywheel"),
            "rankings",
            "report",
            judged.ref.version,
            "--round",
            "0",
            "--plot",
            str(tmp_path / "report.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env,
    )
    assert report.returncode == 0, report.stderr
    decided = decide_run.data.metrics
    assert f"{judged.ref.num_rows} submissions from 2 exports" in report.stdout
    assert "file too large 1, malformed row 1, unknown annotator 1" in report.stdout
    assert f"{int(decided['objects_judged'])} objects judged" in report.stdout
    assert f"accept rate {decided['accept_rate']:.2f}" in report.stdout and "ann-1" in report.stdout, report.stdout
    assert (tmp_path / "report.png").stat().st_size > 10_000
    unknown = subprocess.run(
        [str(BIN / "flywheel"), "rankings", "report", "no-such-version", "--round", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env,
    )
    assert unknown.returncode == 4 and "no rankings to report" in unknown.stderr


def test_same_config_same_digests_in_another_store(synthetic: Made, tmp_path):
    from flows.synth import synth_iso3do

    result = synth_iso3do(config=_config(tmp_path / "other-store"))
    got = {d.name: d for d in result.datasets}
    for name in ("meshes", "iso3do"):
        clean = synthetic.dataset(name).ref
        assert got[name].version == clean.version
        assert got[name].digest == clean.digest, f"{name} content differs between runs"


def test_killed_flow_rerenders_only_missing_parts(monkeypatch, tmp_path):
    from flows.synth import synth_iso3do

    store = _store_env(monkeypatch, tmp_path / "store")
    env = {
        **os.environ,
        "FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state"),
        "FLYWHEEL__RENDER__WORKERS": "1",
        "FLYWHEEL__ISO3DO__SAMPLES": "48",
        "FLYWHEEL__ISO3DO__RESOLUTION": "64",
        "FLYWHEEL__ISO3DO__VIEWS": "6",
    }
    for var in [v for v in env if v.startswith("PREFECT_API")]:
        del env[var]  # the subprocess runs its own (ephemeral) Prefect server
    proc = subprocess.Popen(
        [BIN / "flywheel", "synth", "iso3do"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "killed.log", "wb"),
    )
    deadline = time.monotonic() + 240
    while not list_versions(store, "iso3do-part"):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no part committed in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {m["version"]: m["committed_at"] for m in list_versions(store, "iso3do-part")}
    assert 1 <= len(before) < 3 and not list_versions(store, "iso3do")

    for key, value in env.items():
        if key.startswith("FLYWHEEL__") and key != "FLYWHEEL__PROJECT__STATE_DIR":
            monkeypatch.setenv(key, value)
    result = synth_iso3do()
    after = {m["version"]: m["committed_at"] for m in list_versions(store, "iso3do-part")}
    assert len(after) == 3  # 5 objects, 2 per part
    assert all(after[v] == t for v, t in before.items())  # finished parts were not redone
    final = Dataset(store, "iso3do", result.datasets[1].version)
    assert final.ref.num_rows == 5 * 6 and final.verify() == []


def test_bad_backgrounds_are_quarantined_and_the_rest_goes_on(monkeypatch, tmp_path):
    from PIL import Image

    from flows.synth import synth_occlusions

    store = _store_env(monkeypatch, tmp_path / "store")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(photos / "good.png")
    Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(photos / "grey.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(photos / "tiny.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # as a deployment run given a config file (-p config=FILE): the file replaces FLYWHEEL_CONFIG's
    micro = yaml.safe_load(Path(os.environ["FLYWHEEL_CONFIG"]).read_text())
    config_file = tmp_path / "photos.yaml"
    config_file.write_text(
        yaml.safe_dump({**micro, "occlusions": {**micro["occlusions"], "background_source": str(photos)}})
    )
    result = synth_occlusions(config=str(config_file))
    fo = Dataset(store, "occlusions", result.datasets[1].version)
    bad = {
        r["item_id"].rsplit("/", 1)[-1]: r["detail"] for r in fo.quarantine().to_pylist() if r["kind"] == "background"
    }
    assert set(bad) == {"grey.png", "tiny.png", "broken.jpg"}
    assert "grey-scale" in bad["grey.png"] and "smaller than" in bad["tiny.png"] and "unreadable" in bad["broken.jpg"]
    samples = [r for r in fo.quarantine().to_pylist() if r["kind"] == "sample"]
    assert fo.ref.num_rows + len(samples) == 3
    assert set(fo.manifest().column("background_id").to_pylist()) <= {str(photos / "good.png")}


def test_failed_gate_stops_the_flow_until_an_override_is_recorded(monkeypatch, tmp_path):
    import trimesh

    from flows.synth import synth_iso3do
    from tasks.validation import ValidationFailed

    store = _store_env(monkeypatch, tmp_path / "store")
    upload = tmp_path / "upload"
    upload.mkdir()
    trimesh.creation.icosphere().export(upload / "good.ply")
    for name in ("a.obj", "b.obj", "c.obj"):
        (upload / name).write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")  # no faces
    monkeypatch.setenv("FLYWHEEL__MESHES__SOURCE", str(upload))
    with pytest.raises(ValidationFailed) as err:
        synth_iso3do()
    failed_round = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(load_config().mlflow.experiment).experiment_id],
        filter_string="tags.`flywheel.stage` = 'round'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert failed_round.info.status == "FAILED"
    message = str(err.value)
    assert "stage[quarantined_fraction] expect_column_values_to_be_between" in message and "0.75" in message
    assert not list_versions(store, "iso3do-part")  # nothing downstream ran

    monkeypatch.setenv("FLYWHEEL__VALIDATION__OVERRIDES", '{"meshes": "3 of 4 uploads broken, ticket OPS-42"}')
    result = synth_iso3do()
    assert result.datasets[1].num_rows == 2  # 1 mesh x 2 views
    assert result.mlflow_run_id == failed_round.info.run_id  # the failed round, resumed
    library = f"meshes@{result.datasets[0].version}"  # not the held-out sets' libraries, gated too
    gate_runs = [
        r for r in lineage.stage_runs(result.mlflow_run_id) if r.data.tags.get("validation.dataset") == library
    ]
    assert [r.info.status for r in gate_runs] == ["FAILED", "FINISHED"]
    gate_run = gate_runs[-1]
    assert gate_run.data.tags["validation.success"] == "false"
    assert gate_run.data.tags["validation.override_reason"] == "3 of 4 uploads broken, ticket OPS-42"


def test_a_mesh_added_to_the_source_folder_makes_a_new_library(tmp_path):
    """The library of a user folder is versioned by what the folder holds: re-run unchanged,
    it is cached; with a mesh added, it is rebuilt with that mesh (it used to be a cache hit
    on the folder's path, with the old rows)."""
    import trimesh

    from flows.synth import synth_meshes

    source = tmp_path / "assets"
    source.mkdir()
    trimesh.creation.icosphere().export(source / "ball.ply")
    trimesh.creation.box().export(source / "box.stl")
    cfg = _config(tmp_path / "store", FLYWHEEL__MESHES__SOURCE=str(source))
    first = synth_meshes(config=cfg)
    assert first.datasets[0].num_rows == 2
    again = synth_meshes(config=cfg)
    assert again.datasets == first.datasets and lineage.stage_runs(again.mlflow_run_id) == []  # cached

    trimesh.creation.capsule().export(source / "capsule.ply")
    grown = synth_meshes(config=cfg)
    library = grown.datasets[0]
    assert library.version != first.datasets[0].version and library.num_rows == 3
    sources = Dataset(LocalStore(tmp_path / "store"), library.name, library.version).manifest()["source"]
    assert any(s.endswith("capsule.ply") for s in sources.to_pylist())


def test_mesh_thresholds_come_from_the_config(tmp_path):
    """meshes.min_extent_ratio reaches the filter (a thin plate: refused as flat by default,
    kept when the source allows it) and is part of the library's version."""
    import trimesh

    from flows.synth import synth_meshes

    source = tmp_path / "assets"
    source.mkdir()
    trimesh.creation.box(extents=(1.0, 1.0, 5e-4)).export(source / "plate.stl")
    trimesh.creation.icosphere().export(source / "ball.ply")
    strict = synth_meshes(config=_config(tmp_path / "store", FLYWHEEL__MESHES__SOURCE=str(source))).datasets[0]
    store = LocalStore(tmp_path / "store")
    assert strict.num_rows == 1
    assert Dataset(store, strict.name, strict.version).quarantine()["reason"].to_pylist() == ["flat"]
    lenient = synth_meshes(
        config=_config(
            tmp_path / "store", FLYWHEEL__MESHES__SOURCE=str(source), FLYWHEEL__MESHES__MIN_EXTENT_RATIO="1e-4"
        )
    ).datasets[0]
    assert lenient.num_rows == 2 and lenient.version != strict.version


def _damage(store: LocalStore, ds: Dataset, shard: int = 0) -> Path:
    """Cut a committed shard of ``ds`` to half its bytes, as a failing disk or a bad copy does."""
    path = store.local_path(f"{ds._base}/shards/{ds.marker['shards'][shard]['name']}")
    path.chmod(0o644)
    os.truncate(path, path.stat().st_size // 2)
    return path


def test_a_damaged_dataset_is_repaired_by_the_runbook(monkeypatch, tmp_path):
    """infra/RUNBOOK.md's procedure, end to end: a truncated shard is one clear error for
    readers and a failed integrity expectation for the gate; `datasets repair` removes the
    version; re-running the flow rebuilds it (its cached task runs again) from parts that were
    copied, not linked; a damaged part stops the re-run by name until it is repaired too."""
    from flows.synth import synth_iso3do
    from flywheel.core.datasets import DatasetCorrupt
    from flywheel.validation.suites import validate

    store = _store_env(monkeypatch, tmp_path / "store")
    monkeypatch.setenv("FLYWHEEL__PROJECT__STATE_DIR", str(tmp_path / "state"))
    cli = [str(BIN / "flywheel"), "datasets"]
    first = synth_iso3do().datasets[1]
    iso = Dataset(store, "iso3do", first.version)
    _damage(store, iso)

    with pytest.raises(
        DatasetCorrupt, match=rf"iso3do@{first.version}: shard shard-000000.tar (is unreadable|holds \d samples)"
    ):
        list(iso.samples())
    report = validate(iso, load_config().validation)
    assert not report.success and [f.table for f in report.failures] == ["integrity"]
    shown = subprocess.run([*cli, "show", str(first), "--verify", "-n", "0"], capture_output=True, text=True)
    assert shown.returncode == 1 and "checksum mismatch" in shown.stderr

    repaired = subprocess.run([*cli, "repair", str(first)], capture_output=True, text=True)
    assert repaired.returncode == 0 and f"removed {first}" in repaired.stdout, repaired.stderr
    assert not list_versions(store, "iso3do")
    again = subprocess.run([*cli, "repair", str(first)], capture_output=True, text=True)
    assert again.returncode == 4 and again.stderr.count("\n") == 1  # gone: one line, "not committed"

    parts = {m["version"]: m["committed_at"] for m in list_versions(store, "iso3do-part")}
    rebuilt = synth_iso3do().datasets[1]  # the cached assembly is dangling: it runs again
    assert rebuilt == first and Dataset(store, "iso3do", rebuilt.version).verify() == []
    assert {m["version"]: m["committed_at"] for m in list_versions(store, "iso3do-part")} == parts  # not re-rendered

    # the assembly and a part damaged (as when they shared a file): the rebuild refuses the part
    # by name; the part repaired too, the re-run renders only that part again
    part = Dataset(store, "iso3do-part", sorted(parts)[0])
    _damage(store, part)
    _damage(store, Dataset(store, "iso3do", rebuilt.version))
    subprocess.run([*cli, "repair", str(rebuilt)], capture_output=True, text=True, check=True)
    with pytest.raises(DatasetCorrupt, match=rf"iso3do-part@{part.ref.version}: shard .* is damaged"):
        synth_iso3do()
    healthy = subprocess.run([*cli, "repair", f"iso3do-part@{sorted(parts)[1]}"], capture_output=True, text=True)
    assert healthy.returncode == 0 and "intact" in healthy.stdout and "nothing removed" in healthy.stdout
    subprocess.run([*cli, "repair", str(part.ref)], capture_output=True, text=True, check=True)
    final = synth_iso3do().datasets[1]
    assert final == first and Dataset(store, "iso3do", final.version).verify() == []
    after = {m["version"]: m["committed_at"] for m in list_versions(store, "iso3do-part")}
    assert [v for v in after if after[v] != parts[v]] == [part.ref.version]


def test_the_library_to_train_on_never_holds_a_held_out_mesh(tmp_path):
    """Held-out sets drawn with the training library's own seed hold its first meshes (the
    "real" world shares the first families, the synthetic world all of them): the library
    quarantines exactly those, as "held out" with the held-out mesh each matched, and keeps
    the rest."""
    from flows.synth import synth_meshes

    cfg = _config(
        tmp_path / "store",
        FLYWHEEL__ROUNDS__EVAL_SEED="0",
        FLYWHEEL__MESHES__SEED="0",
        FLYWHEEL__MESHES__NUM_PROCEDURAL="10",
    )
    library = synth_meshes(config=cfg).datasets[0]
    meshes = Dataset(LocalStore(tmp_path / "store"), "meshes", library.version)
    held_out = [p["version"] for p in meshes.marker["parents"]]
    assert len(held_out) == 2  # rounds.eval_meshes = 4 of the "real" world, synthetic_eval_objects = 2
    quarantined = meshes.quarantine().to_pylist()
    assert [(q["item_id"], q["reason"]) for q in quarantined] == [(f"procedural:0/{i}", "held out") for i in range(4)]
    for i, q in enumerate(quarantined):
        assert any(q["detail"] == f"same geometry as held-out mesh procedural:0/{i} (meshes@{v})" for v in held_out)
    assert meshes.manifest().column("source").to_pylist() == [f"procedural:0/{i}" for i in range(4, 10)]


def test_a_failed_flow_ends_in_one_error_line_with_its_tracebacks_in_a_file(tmp_path):
    """An empty mesh folder makes an empty library: its gate fails (never zero rows and a
    green gate); the terminal shows Prefect's one-line failure messages and the CLI's `error:`
    line naming the cause, not ~100 lines of tracebacks, which go to a log file it names;
    --debug prints them."""
    (tmp_path / "empty").mkdir()
    env = cli_env(
        tmp_path / "store",
        FLYWHEEL__PROJECT__STATE_DIR=str(tmp_path / "state"),
        FLYWHEEL__MESHES__SOURCE=str(tmp_path / "empty"),
    )
    run = subprocess.run([BIN / "flywheel", "synth", "meshes"], env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "no rows (0 quarantined)" in last and "tracebacks: " in last
    log = Path(last.rsplit("tracebacks: ", 1)[1].rstrip(")"))
    assert "Traceback (most recent call last)" in log.read_text() and "ValidationFailed" in log.read_text()
    debug = subprocess.run([BIN / "flywheel", "--debug", "synth", "meshes"], env=env, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
