"""The parts a round is made of, on their own: the SFT curriculum, held-out evaluation, the
promotion rule, the one-round-at-a-time lock, the round ledger and the config sections."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from flywheel.core.config import ConfigError, load_config
from flywheel.core.records import DatasetRef, ModelRef
from flywheel.core.store import LocalStore
from flywheel.feedback.simulate import SimulatedAnnotator
from flywheel.learning.architecture import model_architecture
from flywheel.learning.heldout import Scores, baseline_warnings, family_report, halves, heldout_reports, seed_noise
from flywheel.learning.toy import toy_examples
from flywheel.rounds import ledger as rounds
from flywheel.rounds.promotion import Promotion, promotion
from flywheel.rounds.record import SCHEMA_VERSION, RoundRecord
from sam3d_model.baselines import ConstantShape, Retrieval
from sam3d_model.config import preset
from sam3d_model.data import curriculum_stream
from sam3d_model.evaluation import Interval, Truth, consensus, evaluate, paired_gains, repeated
from sam3d_model.interface import Prediction
from sam3d_model.metrics import diameter, occupancy_to_mesh, surface_points
from sam3d_model.model import SmallSam3D


def _tagged(value: float, count: int) -> list[dict]:
    return [{"source": torch.tensor(value), "index": torch.tensor(i)} for i in range(count)]


def _source(examples: list[dict]):
    return lambda: examples


def test_curriculum_moves_from_synthetic_to_real_and_ends_on_real_only():
    real, synthetic = _source(_tagged(1.0, 5)), _source(_tagged(0.0, 7))
    batches = list(curriculum_stream(real, synthetic, [0.8, 0.5, 0.2, 0.0], steps=8, batch_size=10, seed=3))
    synthetic_share = [int((b["source"] == 0).sum()) / 10 for b in batches]
    assert synthetic_share == [0.8, 0.8, 0.5, 0.5, 0.2, 0.2, 0.0, 0.0]
    again = list(curriculum_stream(real, synthetic, [0.8, 0.5, 0.2, 0.0], steps=8, batch_size=10, seed=3))
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(batches, again))  # seeded
    # each source is drawn as a stream: every example once before any again
    drawn = torch.cat([b["index"][b["source"] == 0] for b in batches])
    assert sorted(drawn[:7].tolist()) == list(range(7)) and sorted(drawn[7:14].tolist()) == list(range(7))
    only_synthetic = list(curriculum_stream(None, synthetic, [0.0], steps=2, batch_size=4))
    assert all(bool((b["source"] == 0).all()) for b in only_synthetic)  # nothing accepted yet: replay only
    with pytest.raises(ValueError, match="no examples"):
        next(curriculum_stream(None, None, [0.5], steps=1, batch_size=2))


def test_artist_meshes_take_their_share_of_the_real_part_of_each_batch():
    real, synthetic, artist = _source(_tagged(1.0, 5)), _source(_tagged(0.0, 7)), _source(_tagged(2.0, 3))
    batches = list(curriculum_stream(real, synthetic, [0.5, 0.0], 4, 8, seed=1, artist=artist, artist_share=0.25))
    counts = [[int((b["source"] == v).sum()) for v in (0.0, 1.0, 2.0)] for b in batches]
    assert counts == [[4, 3, 1], [4, 3, 1], [0, 6, 2], [0, 6, 2]]  # synthetic, accepted, artist
    no_accepted = list(curriculum_stream(None, synthetic, [0.5], 2, 8, artist=artist, artist_share=0.25))
    assert all(int((b["source"] == 2.0).sum()) == 4 for b in no_accepted)  # artists fill the real part
    plain = list(curriculum_stream(real, synthetic, [0.5], 3, 8, seed=2))
    same = list(curriculum_stream(real, synthetic, [0.5], 3, 8, seed=2, artist=None, artist_share=0.25))
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(plain, same))  # no artist data: as before


def test_evaluation_is_deterministic_and_scores_the_truth_perfectly():
    torch.manual_seed(0)
    cfg = preset("micro")
    model = SmallSam3D(cfg).eval()
    examples = toy_examples(cfg, 3)
    first, second = evaluate(model, examples, seeds=2), evaluate(model, examples, seeds=2)
    assert first == second
    summary = first["summary"]
    assert summary["objects"] == 3 and len(first["objects"]) == 3
    assert {
        "viou",
        "f1",
        "chamfer",
        "emd",
        "f1_unit_cube",
        "chamfer_unit_cube",
        "rotation_error_deg",
        "rotation_error_deg_plain",
        "icp_rotation_error_deg",
        "translation_error",
        "add_s",
        "add_s_accuracy",
        "box_iou",
    } <= set(summary)

    class Oracle:  # predicts each example's own target: the metrics' best values
        def sample(self, batch, *, steps=None, guidance=None, shortcut=False, seed=0):
            from sam3d_model.interface import Prediction

            picked = [e for e in examples if any(torch.equal(e["crop"], c) for c in batch["crop"])]
            return Prediction(
                torch.stack([e["occupancy"] for e in picked]),
                torch.stack([e["rotation"] for e in picked]),
                torch.stack([e["translation"] for e in picked]),
                torch.stack([e["scale"] for e in picked]),
            )

    perfect = evaluate(Oracle(), examples, seeds=1)["summary"]
    assert perfect["viou"] == 1.0 and perfect["f1"] == 1.0 and perfect["add_s_accuracy"] == 1.0
    assert perfect["box_iou"] == pytest.approx(1.0) and perfect["add_s"] == 0.0 and perfect["emd"] == 0.0
    assert perfect["rotation_error_deg"] < 0.1 and perfect["translation_error"] == 0.0
    assert perfect["icp_rotation_error_deg"] < 3  # the ICP's sampling floor
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [])


def test_a_truth_is_its_own_shapes_even_after_another_shape_was_scored():
    cfg = preset("micro")
    example = toy_examples(cfg, 1)[0]
    first = Truth.of(example)
    cut = example["occupancy"].clone()
    cut[: cut.shape[0] // 2] = 0  # half of it, no longer the shape it was
    changed = Truth.of({**example, "occupancy": cut})
    fresh = occupancy_to_mesh(cut.numpy() > 0.5)
    assert np.array_equal(changed.points, surface_points(fresh, 512))
    assert changed.diameter == diameter(fresh.vertices) and not np.array_equal(changed.points, first.points)
    assert np.array_equal(Truth.of(example).points, first.points)


def _rotation_z(degrees: float) -> torch.Tensor:
    a = torch.tensor(degrees).deg2rad()
    return torch.tensor([[a.cos(), -a.sin(), 0.0], [a.sin(), a.cos(), 0.0], [0.0, 0.0, 1.0]])


def test_consensus_of_samples_is_their_point_estimate():
    # 3 samples (sample-major rows) of 2 objects; object 0's voxel a is in 2 of 3 samples, b in 1 of 3
    occupancy = torch.zeros(6, 2, 2, 2)
    occupancy[[0, 2], 0, 0, 0] = 1.0  # a: samples 0 and 1 of object 0
    occupancy[4, 1, 1, 1] = 1.0  # b: sample 2 of object 0
    occupancy[[1, 3, 5], 0, 1, 0] = 0.9  # object 1: every sample, not sure
    rotation = torch.stack([_rotation_z(d) for d in (30, 80, -30, 80, 0, 80)])
    translation = torch.tensor([[0.0, 0, 2], [1, 1, 1], [0.3, 0, 2], [1, 1, 1], [0.6, 0, 2], [1, 1, 1]])
    scale = torch.tensor([1.0, 2.0, 4.0, 2.0, 2.0, 2.0])
    estimate = consensus(Prediction(occupancy, rotation, translation, scale), 3)
    first, second = estimate.item(0), estimate.item(1)
    assert first["occupancy"][0, 0, 0] and not first["occupancy"][1, 1, 1] and first["occupancy"].sum() == 1
    assert second["occupancy"][0, 1, 0] and second["occupancy"].sum() == 1
    assert torch.allclose(torch.from_numpy(first["rotation"]), torch.eye(3), atol=1e-6)  # +30, -30, 0 about z
    assert torch.allclose(torch.from_numpy(second["rotation"]), _rotation_z(80), atol=1e-6)
    assert first["translation"].tolist() == pytest.approx([0.3, 0.0, 2.0]) and first["scale"] == pytest.approx(2.0)
    assert second["scale"] == pytest.approx(2.0)
    same = Prediction(occupancy[:2], rotation[:2], translation[:2], scale[:2])
    assert consensus(same, 1) is same
    with pytest.raises(ValueError, match="not 4 samples"):
        consensus(Prediction(occupancy, rotation, translation, scale), 4)
    batch = {"crop": torch.arange(2.0).view(2, 1), "full_valid": torch.tensor([True, False])}
    assert repeated(batch, 3)["crop"].flatten().tolist() == [0, 1, 0, 1, 0, 1]


def test_a_models_consensus_is_deterministic_and_a_baselines_is_its_answer():
    torch.manual_seed(0)
    cfg = preset("micro")
    model = SmallSam3D(cfg).eval()
    examples = toy_examples(cfg, 4)
    single = evaluate(model, examples, seeds=1, samples=1)
    estimate = evaluate(model, examples, seeds=1, samples=4)
    assert estimate == evaluate(model, examples, seeds=1, samples=4)
    assert estimate["objects"] != single["objects"]  # four samples, not the first one again
    constant = ConstantShape.fit(examples)  # a deterministic sampler: its consensus is its answer
    assert evaluate(constant, examples, seeds=1, samples=3) == evaluate(constant, examples, seeds=1)
    with pytest.raises(ValueError, match="samples must be 1 or more"):
        evaluate(model, examples, samples=0)


def test_promotion_decides_on_intervals_not_means():
    rule = {"metric": "viou", "min_gain": 0.0, "max_regression": {"f1": 0.02, "rotation_error_deg": 5.0}}
    flat = {"f1": Interval(0.0, -0.01, 0.01), "rotation_error_deg": Interval(0.0, -1.0, 1.0)}
    clear = promotion({**flat, "viou": Interval(0.05, 0.01, 0.09)}, **rule)
    assert clear.promote and clear.interval == (0.01, 0.09) and "95% confidence" in clear.reason
    noisy = promotion({**flat, "viou": Interval(0.05, -0.01, 0.11)}, **rule)  # same mean gain, wider interval
    assert not noisy.promote and "not above 0.0" in noisy.reason
    # a loss whose interval reaches the allowance is not credible; one entirely beyond it is
    assert promotion({**flat, "viou": Interval(0.05, 0.01, 0.09), "f1": Interval(-0.03, -0.06, -0.01)}, **rule).promote
    worse = promotion({**flat, "viou": Interval(0.05, 0.01, 0.09), "f1": Interval(-0.05, -0.07, -0.03)}, **rule)
    assert not worse.promote and worse.regressions == {"f1": 0.05} and "regressed: f1" in worse.reason
    with pytest.raises(ValueError, match="promote metric 'viou'"):
        promotion(flat, **rule)
    # a credible gain no larger than what reseeding the stage alone moves the metric is not enough
    within = promotion({**flat, "viou": Interval(0.05, 0.01, 0.09)}, **rule, seed_noise=0.06)
    assert not within.promote and within.seed_noise == 0.06 and "within the training-seed noise" in within.reason
    beyond = promotion({**flat, "viou": Interval(0.05, 0.01, 0.09)}, **rule, seed_noise=0.04)
    assert beyond.promote and "beyond the training-seed noise 0.0400" in beyond.reason


def test_family_report_groups_every_object_by_its_mesh_family():
    families = ["torus", "stack", "torus", "capsule"]
    model = Scores(mesh_ids=list("abcd"), objects=[{"viou": v} for v in (0.9, 0.2, 0.7, 0.5)], families=families)
    constant = Scores(mesh_ids=list("abcd"), objects=[{"viou": v} for v in (0.4, 0.3, 0.4, 0.6)], families=families)
    report = family_report({"champion": model, "constant": constant})
    assert report == {
        "capsule": {"objects": 1.0, "champion": 0.5, "constant": 0.6},
        "stack": {"objects": 1.0, "champion": 0.2, "constant": 0.3},
        "torus": {"objects": 2.0, "champion": pytest.approx(0.8), "constant": pytest.approx(0.4)},
    }
    assert family_report({"champion": Scores(mesh_ids=["a"], objects=[{"viou": 1.0}])}) == {}  # families unknown


def test_seed_noise_is_the_spread_of_the_metric_over_training_seeds():
    def scores(*viou: float) -> Scores:
        return Scores(mesh_ids=[f"m{i}" for i in range(len(viou))], objects=[{"viou": v, "chamfer": 0.1} for v in viou])

    noise = seed_noise("sft", "viou", "selection", {2: scores(0.5, 0.7), 0: scores(0.4, 0.6), 1: scores(0.55, 0.6)}, 3)
    assert noise.seeds == [0, 1, 2] and noise.values == pytest.approx([0.5, 0.575, 0.6])
    assert noise.spread == pytest.approx(0.1) and noise.round == 3
    assert str(noise).startswith("viou spread 0.1000 over 3 training seeds of sft (0.500, 0.575, 0.600")
    with pytest.raises(ValueError, match="2 or more seeds"):
        seed_noise("sft", "viou", "selection", {0: scores(0.5)}, 0)


def test_paired_gains_are_paired_and_know_which_way_a_metric_points():
    a = [{"viou": 0.2 + 0.1 * (i % 5), "chamfer": 0.1} for i in range(20)]
    b = [{"viou": o["viou"] + 0.05, "chamfer": 0.08} for o in a]  # better by exactly 0.05 / 0.02 everywhere
    gains = paired_gains(a, b, seed=1)
    assert gains["viou"].gain == pytest.approx(0.05) and gains["viou"].low == pytest.approx(0.05)
    assert gains["viou"].high == pytest.approx(0.05)  # paired: the objects' spread does not widen it
    assert gains["chamfer"].gain == pytest.approx(0.02)  # lower is better: a positive gain
    mixed = [{"viou": o["viou"] + (0.1 if i % 2 else -0.1), "chamfer": 0.1} for i, o in enumerate(a)]
    noisy = paired_gains(a, mixed, seed=1)["viou"]
    assert noisy.low < 0 < noisy.high and noisy.gain == pytest.approx(0.0)
    # whole meshes are drawn together: 2 meshes, one all +0.1, one all -0.1 -> the interval spans both
    clustered = paired_gains(a, mixed, groups=["m1" if i % 2 else "m2" for i in range(20)], seed=1)["viou"]
    assert clustered.low == pytest.approx(-0.1) and clustered.high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same, non-empty objects"):
        paired_gains(a, b[:3])


def test_baselines_are_fitted_on_training_examples_and_score_like_models():
    cfg = preset("micro")
    train = toy_examples(cfg, 6)
    constant = ConstantShape.fit(train)
    batch = {k: torch.stack([e[k] for e in train]) for k in ("crop", "full", "full_valid")}
    pred = constant.sample(batch, seed=3)
    assert torch.equal(pred.occupancy[0], pred.occupancy[5]) and pred.occupancy.shape == (
        6,
        *train[0]["occupancy"].shape,
    )
    assert torch.allclose(pred.rotation[0] @ pred.rotation[0].T, torch.eye(3), atol=1e-5)  # a rotation
    assert torch.allclose(pred.translation[0], torch.stack([e["translation"] for e in train]).mean(0))
    # the threshold is the best of those tried on the training shapes: no other cut does better there
    mean = torch.stack([e["occupancy"] for e in train]).mean(0)
    chosen = evaluate(constant, train, seeds=1)["summary"]["viou"]
    for level in (0.2, 0.5, 0.8):
        other = ConstantShape((mean > level).float(), constant.rotation, constant.translation, constant.scale)
        assert evaluate(other, train, seeds=1)["summary"]["viou"] <= chosen + 1e-9
    # retrieval shown a training image returns that example's own shape and pose
    found = Retrieval(train).sample(batch)
    assert torch.equal(found.occupancy, torch.stack([e["occupancy"] for e in train]))
    assert torch.equal(found.rotation, torch.stack([e["rotation"] for e in train]))


def test_heldout_halves_split_by_mesh_and_carry_intervals():
    objects = [{"viou": 0.1 * (i % 4), "chamfer": 0.1, "f1": 0.5, "rotation_error_deg": 40.0} for i in range(12)]
    mesh_ids = [f"mesh-{i // 2}" for i in range(12)]  # 6 meshes, 2 objects each
    # the challenger: better shape, rotation 10° worse everywhere
    better = [{**o, "viou": o["viou"] + 0.1, "rotation_error_deg": 50.0} for o in objects]
    scores = {
        "champion": Scores(mesh_ids=mesh_ids, objects=objects),
        "challenger": Scores(mesh_ids=mesh_ids, objects=better),
        "constant": Scores(mesh_ids=mesh_ids, objects=objects),  # the champion only ties it
    }
    reports = heldout_reports(scores)
    assert reports["selection"].meshes == reports["reporting"].meshes == 3
    assert reports["selection"].objects + reports["reporting"].objects == 12
    half = halves(mesh_ids)
    assert all(half[m] == half[mesh_ids[2 * (i // 2)]] for i, m in enumerate(mesh_ids))  # a mesh stays in one half
    gain = reports["selection"].gains("challenger-vs-champion")["viou"]
    assert gain.gain == pytest.approx(0.1) and gain.low == pytest.approx(0.1)
    warnings = baseline_warnings(reports["reporting"])
    assert len(warnings) == 2 and "champion does not beat the constant-shape baseline on held-out viou" in warnings[0]
    assert "challenger's held-out rotation error is worse than the mean training pose's: gain -10.0000" in warnings[1]
    with pytest.raises(ValueError, match="same objects"):
        heldout_reports({**scores, "retrieval": Scores(mesh_ids=mesh_ids[::-1], objects=objects)})


def test_round_lock_refuses_while_held_and_is_free_once_the_holder_is_killed(tmp_path, caplog):
    lock = tmp_path / "rounds.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\nfrom pathlib import Path\nfrom flywheel.rounds.ledger import round_lock\n"
                f"with round_lock(Path({str(lock)!r}), 0):\n    print('held', flush=True)\n    time.sleep(600)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(
        rounds.RoundBusy, match=rf"another flywheel round or synth is running \(.*\"pid\": {holder.pid}"
    ):
        with rounds.round_lock(lock, 0):
            pass
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flywheel.rounds.ledger"):
        with pytest.raises(rounds.RoundBusy, match="waited 1 s"):
            with rounds.round_lock(lock, 1):
                pass
    assert time.monotonic() - started >= 1
    # a waiting round says who holds the lock, while it waits (not only when it gives up)
    waiting = [r.getMessage() for r in caplog.records if "waiting for the round lock" in r.getMessage()]
    assert waiting and f'"pid": {holder.pid}' in waiting[0] and "of at most 1 s" in waiting[0]
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with rounds.round_lock(lock, 0):  # the kernel released it with its holder
        pass


def _record(k: int, series: str = "s1", reason: str = "first") -> RoundRecord:
    model = ModelRef("sam3d", k + 1, f"models:/sam3d/{k + 1}", "ab" * 32)
    data = DatasetRef("sft", f"v{k}", f"/store/datasets/sft/v{k}", "cd" * 32, 3)
    return RoundRecord(
        round=k,
        series=series,
        champion_before=model,
        challenger=model,
        champion_after=model,
        promotion=Promotion(promote=False, metric="viou", gain=0.0, regressions={}, reason=reason),
        evaluation={"champion": {"viou": 0.3}, "challenger": {"viou": 0.3}},
        rankings={"accept_rate": 0.5, "accepted": 2},
        volumes={"sft": 3},
        seconds={"evaluate": 1.5},
        stages=["sft"],
        datasets={"sft": data},
        sft_history=[data],
    )


def test_round_records_are_committed_once(tmp_path):
    store = LocalStore(tmp_path / "store")
    first = _record(0)
    assert rounds.write_round(store, first) == first
    assert rounds.write_round(store, _record(0, reason="second")) == first  # the first one stays
    rounds.write_round(store, _record(1))
    assert [r.round for r in rounds.committed_rounds(store, "s1")] == [0, 1]
    assert rounds.read_round(store, "s1", 2) is None and rounds.committed_rounds(store, "other") == []


def test_round_record_json_is_versioned_and_checked():
    record = _record(0)
    data = json.loads(record.to_json())
    assert data["schema_version"] == SCHEMA_VERSION and data["champion_after"]["uri"] == "models:/sam3d/1"
    assert data["rankings"]["accepted"] == 2 and isinstance(data["rankings"]["accepted"], int)
    assert RoundRecord.from_json(record.to_json()) == record
    del data["schema_version"]  # written before the schema had a version: read as version 1
    assert RoundRecord.from_json(json.dumps(data)) == record.model_copy(update={"schema_version": 1})
    with pytest.raises(ValidationError, match="schema_version"):
        RoundRecord.from_json(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ValidationError, match="champion_after"):
        RoundRecord.from_json(json.dumps({k: v for k, v in data.items() if k != "champion_after"}))


def test_series_changes_with_what_shapes_rounds_not_with_how_they_run_or_where_the_store_is(tmp_path):
    def config(root: Path, **env: str):
        return load_config(environ={"FLYWHEEL__STORE__ROOT": str(root), **env})

    base = rounds.series_id(config(tmp_path / "a"))
    assert base == rounds.series_id(
        config(tmp_path / "a", FLYWHEEL__ROUNDS__LOCK_WAIT_S="0", FLYWHEEL__CANDIDATES__ACTORS="4")
    )
    assert base != rounds.series_id(config(tmp_path / "a", FLYWHEEL__MODEL__SFT__STEPS="10"))
    assert base != rounds.series_id(config(tmp_path / "another-store"))
    # a store moved or restored elsewhere is the same store: its series (and round history) follow it
    shutil.move(tmp_path / "a", tmp_path / "moved")
    assert rounds.series_id(config(tmp_path / "moved")) == base


def test_model_and_rounds_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.preset = 'huge'"):
        load_config(environ={"FLYWHEEL__MODEL__PRESET": "huge"})
    with pytest.raises(ConfigError, match="model.overrides.*no_such_field"):
        model_architecture(load_config(environ={"FLYWHEEL__MODEL__OVERRIDES": "{no_such_field: 1}"}).model)
    with pytest.raises(ConfigError, match="model.curriculum"):
        load_config(environ={"FLYWHEEL__MODEL__CURRICULUM": "[1.5]"})
    with pytest.raises(ConfigError, match="rounds.promote_metric"):
        load_config(environ={"FLYWHEEL__ROUNDS__PROMOTE_METRIC": "accuracy"})
    team = load_config(environ={}).rounds.annotators
    assert [SimulatedAnnotator.from_settings(a).reject_threshold for a in team] == [0.6, 0.55, 0.6]


def test_a_stage_checkpoint_is_named_by_everything_that_shapes_it():
    from flywheel.learning.stages import checkpoint_name, stage_settings

    section = load_config(environ={}).model
    data = {"sft": [DatasetRef("sft", "v1", "/s/sft/v1", "d" * 64, 3)]}
    init = ModelRef("sam3d", 1, "models:/sam3d/1", "ab" * 32).checkpoint
    base = checkpoint_name("sft", init, data, stage_settings(section, "sft"), {})
    assert base.startswith("sft-") and base == checkpoint_name("sft", init, data, stage_settings(section, "sft"), {})
    other_data = {"sft": [DatasetRef("sft", "v2", "/s/sft/v2", "e" * 64, 3)]}
    changed = [
        checkpoint_name("sft", None, data, stage_settings(section, "sft"), {}),
        checkpoint_name("sft", init, other_data, stage_settings(section, "sft"), {}),
        checkpoint_name("sft", init, data, {**stage_settings(section, "sft"), "lr": 1.0}, {}),
    ]
    assert len({base, *changed}) == 4
    assert "curriculum" in stage_settings(section, "sft") and "beta" in stage_settings(section, "dpo")
    with pytest.raises(ValueError, match="unexpected dataset roles"):
        checkpoint_name("dpo", init, data, {}, {})
