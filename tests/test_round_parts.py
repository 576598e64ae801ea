"""The parts a round is made of, on their own: the SFT curriculum, held-out evaluation, the
promotion rule, the one-round-at-a-time lock, the round ledger and the config sections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from pydantic import ValidationError

from flywheel.core.config import ConfigError, load_config
from flywheel.core.records import DatasetRef, ModelRef
from flywheel.core.store import LocalStore
from flywheel.feedback.simulate import SimulatedAnnotator
from flywheel.learning.architecture import model_architecture
from flywheel.learning.toy import toy_examples
from flywheel.rounds import ledger as rounds
from flywheel.rounds.promotion import Promotion, promotion
from flywheel.rounds.record import SCHEMA_VERSION, RoundRecord
from sam3d_model.config import preset
from sam3d_model.data import curriculum_stream
from sam3d_model.evaluation import evaluate
from sam3d_model.model import SmallSam3D


def _tagged(value: float, count: int) -> list[dict]:
    return [{"source": torch.tensor(value), "index": torch.tensor(i)} for i in range(count)]


def test_curriculum_moves_from_synthetic_to_real_and_ends_on_real_only():
    real, synthetic = _tagged(1.0, 5), _tagged(0.0, 7)
    batches = list(curriculum_stream(real, synthetic, [0.8, 0.5, 0.2, 0.0], steps=8, batch_size=10, seed=3))
    synthetic_share = [int((b["source"] == 0).sum()) / 10 for b in batches]
    assert synthetic_share == [0.8, 0.8, 0.5, 0.5, 0.2, 0.2, 0.0, 0.0]
    again = list(curriculum_stream(real, synthetic, [0.8, 0.5, 0.2, 0.0], steps=8, batch_size=10, seed=3))
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(batches, again))  # seeded
    only_synthetic = list(curriculum_stream([], synthetic, [0.0], steps=2, batch_size=4))
    assert all(bool((b["source"] == 0).all()) for b in only_synthetic)  # nothing accepted yet: replay only
    with pytest.raises(ValueError, match="no examples"):
        next(curriculum_stream([], [], [0.5], steps=1, batch_size=2))


def test_evaluation_is_deterministic_and_scores_the_truth_perfectly():
    torch.manual_seed(0)
    cfg = preset("micro")
    model = SmallSam3D(cfg).eval()
    examples = toy_examples(cfg, 3)
    first, second = evaluate(model, examples, seeds=2), evaluate(model, examples, seeds=2)
    assert first == second
    summary = first["summary"]
    assert summary["objects"] == 3 and len(first["objects"]) == 3
    assert {"viou", "f1", "chamfer", "rotation_error_deg", "translation_error", "add_s_accuracy"} <= set(summary)

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
    assert perfect["rotation_error_deg"] < 0.1 and perfect["translation_error"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [])


def test_promotion_rule():
    champion = {"viou": 0.30, "f1": 0.10, "rotation_error_deg": 40.0}
    rule = {"metric": "viou", "min_gain": 0.01, "max_regression": {"f1": 0.02, "rotation_error_deg": 5.0}}
    assert promotion(champion, {**champion, "viou": 0.32}, **rule).promote
    small = promotion(champion, {**champion, "viou": 0.305}, **rule)
    assert not small.promote and "gain +0.0050 < 0.01" in small.reason
    worse_f1 = promotion(champion, {**champion, "viou": 0.35, "f1": 0.07}, **rule)
    assert not worse_f1.promote and "f1" in worse_f1.regressions
    worse_rotation = promotion(
        champion, {**champion, "viou": 0.35, "rotation_error_deg": 50.0}, **rule
    )  # lower is better
    assert not worse_rotation.promote and "rotation_error_deg" in worse_rotation.regressions


def test_round_lock_refuses_while_held_and_is_free_once_the_holder_is_killed(tmp_path):
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
    with pytest.raises(rounds.RoundBusy, match=rf"another flywheel round is running \(.*\"pid\": {holder.pid}"):
        with rounds.round_lock(lock, 0):
            pass
    started = time.monotonic()
    with pytest.raises(rounds.RoundBusy, match="waited 1 s"):
        with rounds.round_lock(lock, 1):
            pass
    assert time.monotonic() - started >= 1
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
    assert RoundRecord.from_json(json.dumps(data)) == record
    with pytest.raises(ValidationError, match="schema_version"):
        RoundRecord.from_json(json.dumps({**data, "schema_version": 2}))
    with pytest.raises(ValidationError, match="champion_after"):
        RoundRecord.from_json(json.dumps({k: v for k, v in data.items() if k != "champion_after"}))


def test_series_changes_with_what_shapes_rounds_not_with_how_they_run():
    base = load_config(environ={})
    assert rounds.series_id(base) == rounds.series_id(
        load_config(environ={"FLYWHEEL__ROUNDS__LOCK_WAIT_S": "0", "FLYWHEEL__CANDIDATES__ACTORS": "4"})
    )
    assert rounds.series_id(base) != rounds.series_id(load_config(environ={"FLYWHEEL__MODEL__SFT__STEPS": "10"}))
    assert rounds.series_id(base) != rounds.series_id(load_config(environ={"FLYWHEEL__STORE__ROOT": "/elsewhere"}))


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
    assert [SimulatedAnnotator.from_settings(a).reject_threshold for a in team][:1] == [0.15]


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
