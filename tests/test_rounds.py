"""Flywheel rounds for real, on micro settings (configs/test.yaml): Prefect flow runs, Ray
actors, Blender workers, MLflow lineage and registry, simulated annotators.

A clean series of two rounds; a round killed in its last stage and re-run; two rounds
triggered at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from conftest import cli_env

from flywheel.core.config import FlywheelConfig, load_config
from flywheel.core.datasets import Dataset
from flywheel.core.store import Store
from flywheel.rounds import ledger as rounds
from flywheel.rounds.record import RoundRecord
from flywheel.tracking import lineage
from tasks.conventions import store_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
BIN = Path(sys.executable).parent
TRAINING_STAGES = {"vae", "encoder", "pretrain", "midtrain", "sft", "dpo"}


def _comparable(record: dict) -> dict:
    """What a round committed, without where and when it ran."""
    out = {k: v for k, v in record.items() if k not in ("series", "seconds", "mlflow_run_id")}
    out["datasets"] = {k: (d["version"], d["digest"], d["num_rows"]) for k, d in record["datasets"].items()}
    out["sft_history"] = [(d["version"], d["digest"]) for d in record["sft_history"]]
    return out


def _stage_names(parent_run_id: str) -> list[str]:
    return [r.data.tags[lineage.STAGE_TAG] for r in lineage.stage_runs(parent_run_id)]


@dataclass
class CleanRounds:
    cfg: FlywheelConfig
    store: Store
    records: list[dict]  # the round records' JSON form
    aliases: dict[str, int]  # registry alias -> version right after the two rounds (other tests move them)
    flow_run_id: str  # the Prefect flow run of the two rounds


@pytest.fixture(scope="session")
def clean(prefect_server, tmp_path_factory) -> CleanRounds:
    """Two clean rounds in a store of their own, run once for the tests that compare with them."""
    from flows.round import flywheel_rounds

    root = tmp_path_factory.mktemp("rounds") / "store"
    cfg = load_config(environ={**os.environ, "FLYWHEEL__STORE__ROOT": str(root)})
    state = flywheel_rounds(2, config=cfg, return_state=True)
    records = [r.model_dump(mode="json") for r in state.result()]
    client = mlflow.MlflowClient()
    aliases = {a: int(client.get_model_version_by_alias("sam3d", a).version) for a in ("champion", "challenger")}
    return CleanRounds(cfg, store_for(cfg), records, aliases, str(state.state_details.flow_run_id))


def test_two_rounds_end_to_end_with_lineage(clean: CleanRounds):
    from flows.round import flywheel_rounds

    cfg, store, records = clean.cfg, clean.store, clean.records
    assert [r["round"] for r in records] == [0, 1]
    r0, r1 = records
    series = rounds.series_id(cfg)
    assert [r.model_dump(mode="json") for r in rounds.committed_rounds(store, series)][:2] == records

    # round 0 started from the bootstrapped model, round 1 from what round 0 ended with
    client = mlflow.MlflowClient()
    boot = client.get_model_version("sam3d", r0["champion_before"]["version"])
    assert (
        boot.tags["flywheel.round"] == "bootstrap" and boot.tags["flywheel.stages"] == "vae,encoder,pretrain,midtrain"
    )
    assert r1["champion_before"] == r0["champion_after"]
    for r in records:
        assert r["champion_after"] == (r["challenger"] if r["promotion"]["promote"] else r["champion_before"])
        halves = r["heldout"]
        assert halves["selection"]["objects"] + halves["reporting"]["objects"] == 4  # eval_objects, one per mesh
        assert halves["selection"]["meshes"] == halves["reporting"]["meshes"] == 2
        for who in ("champion", "challenger", "constant", "retrieval"):
            scores = r["evaluation"][who]  # the reporting half's means
            assert 0 <= scores["viou"] <= 1 and 0 <= scores["f1"] <= 1 and scores["objects"] == 2
            assert halves["reporting"]["summary"][who] == scores
        gain, low, high = halves["selection"]["intervals"]["challenger-vs-champion"]["viou"]
        assert low <= gain <= high and r["promotion"]["interval"] == [low, high]
        # the gate decides on the selection half's interval, and on the gain beyond the seed noise
        noise = max(r0["seed_noise"]["values"]) - min(r0["seed_noise"]["values"])
        assert r["promotion"]["seed_noise"] == pytest.approx(noise)
        assert r["promotion"]["promote"] == (low > 0 and gain > noise)
        assert {"champion-vs-constant", "champion-vs-retrieval"} <= set(halves["reporting"]["intervals"])
        assert r["best_of_n"]["objects"] == 3 and r["best_of_n"]["oracle_viou"] >= r["best_of_n"]["model_viou"]
        assert r["stages"] == (["sft", "dpo"] if r["volumes"]["preferences"] else ["sft"])
        assert r["volumes"]["image-pool"] == 3 and r["volumes"]["candidates"] == 12
        assert r["rankings"]["objects_judged"] == 3
        wins = {k: v for k, v in r["rankings"].items() if k.startswith("winners_")}
        assert sum(wins.values()) == r["rankings"]["accepted"] and set(wins) <= {
            "winners_champion",
            "winners_retrieval",
        }
    assert clean.aliases == {"champion": r1["champion_after"]["version"], "challenger": r1["challenger"]["version"]}

    # SFT's training-seed noise: measured once, in round 0 (three seeds, the selection half), carried on
    assert r0["seed_noise"]["seeds"] == [0, 1, 2] and r0["seed_noise"]["round"] == 0
    assert r0["seed_noise"]["split"] == "selection" and all(0 <= v <= 1 for v in r0["seed_noise"]["values"])
    assert r1["seed_noise"] == r0["seed_noise"]
    assert "training-seed noise: viou spread" in rounds.round_text(RoundRecord.model_validate(r0))

    # held-out vIoU per mesh family, over both halves, for every model and baseline
    families = r0["heldout_families"]
    assert sum(f["objects"] for f in families.values()) == 4
    assert set(families) <= {"superquadric", "torus", "extrusion", "compound", "capsule", "stack", "handled"}
    assert all(set(f) == {"objects", "champion", "challenger", "constant", "retrieval"} for f in families.values())
    assert "held-out vIoU by mesh family (both halves):" in rounds.round_text(RoundRecord.model_validate(r0))
    turns = r0["heldout_families_rotation"]  # and the rotation error, family by family
    assert set(turns) == set(families) and all(set(f) == set(families[k]) for k, f in turns.items())
    assert all(0 <= v <= 180 for f in turns.values() for who, v in f.items() if who != "objects")
    assert "rotation error (degrees, symmetry-aware) by mesh family" in rounds.round_text(
        RoundRecord.model_validate(r0)
    )

    # round 0 also scores the bootstrap champion on a held-out set of the synthetic world: the gap
    gap = r0["synthetic_heldout"]
    assert gap["objects"] == 2 and set(gap["summary"]) == {"champion", "constant", "retrieval"}
    assert "champion-vs-constant" in gap["intervals"] and r1["synthetic_heldout"] is None
    assert "world gap, champion held-out viou: synthetic" in rounds.round_text(RoundRecord.model_validate(r0))

    # new images every round, one fixed held-out set, the accepted data accumulates
    assert r0["datasets"]["image-pool"]["version"] != r1["datasets"]["image-pool"]["version"]
    held_out = {r["datasets"]["held-out"]["version"] for r in records}
    assert len(held_out) == 1 and held_out.isdisjoint({r["datasets"]["replay"]["version"] for r in records})
    assert [d["version"] for d in r1["sft_history"]] == [
        r0["datasets"]["sft"]["version"],
        r1["datasets"]["sft"]["version"],
    ]
    rankings1 = Dataset(store, "rankings", r1["datasets"]["rankings"]["version"])
    assert rankings1.ref.num_rows > r0["datasets"]["rankings"]["num_rows"]  # round 0's judgements kept
    assert rankings1.verify() == []

    # MLflow: a parent run per round, a nested run per stage, datasets logged, a summary
    stages = _stage_names(r0["mlflow_run_id"])
    assert TRAINING_STAGES <= set(stages)
    # every stage after the VAE draws a learning curve on held-out objects (step 0 and 5 points)
    midtrain = next(r for r in lineage.stage_runs(r0["mlflow_run_id"]) if r.data.tags[lineage.STAGE_TAG] == "midtrain")
    curve = client.get_metric_history(midtrain.info.run_id, "heldout_viou")
    assert sorted(m.step for m in curve)[0] == 0 and len(curve) >= 5 and all(0 <= m.value <= 1 for m in curve)
    assert {
        "simulate-annotators",
        "ingest-rankings",
        "decide",
        "register-sam3d",
        "evaluate-champion",
        "evaluate-challenger",
        "evaluate-baselines",
        "evaluate-sft-seed-1",
        "evaluate-sft-seed-2",
        "best-of-n",
    } <= set(stages)
    assert {"sft-seed-1", "sft-seed-2"} <= set(stages) and stages.count("sft") == 1  # side runs, own SFT reused
    # the round run carries the config that shaped it; a model version's source is the run that trained it
    experiment = client.get_experiment(client.get_run(r0["mlflow_run_id"]).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on runs, not GenAI
    params = client.get_run(r0["mlflow_run_id"]).data.params
    assert params["model.sft.steps"] == str(cfg.model.sft.steps) and "rounds.eval_objects" in params
    for r in records:
        version = client.get_model_version("sam3d", str(r["challenger"]["version"]))
        source = client.get_run(version.run_id)
        assert source.data.tags[lineage.STAGE_TAG] == r["stages"][-1], source.data.tags  # sft or dpo, not "register"
        assert source.data.tags["mlflow.parentRunId"] == r["mlflow_run_id"]
        assert f"Round {r['round']} of series {series}" in version.description and "Trained in round" in (
            version.description
        )
    assert "evaluate-sft-seed-1" not in _stage_names(r1["mlflow_run_id"])  # measured once per series
    sft_run = next(r for r in lineage.stage_runs(r0["mlflow_run_id"]) if r.data.tags[lineage.STAGE_TAG] == "sft")
    logged = {(d["name"], d["context"]) for d in lineage.run_datasets(sft_run.info.run_id)}
    assert {("sft", "input"), ("occlusions", "input")} <= logged
    # the artist path: round 0's hard cases (within the budget) are queued, the simulated artists deliver
    # them at round 1 (latency 1), and round 1's SFT trains on them as Art-3DO
    a0, a1 = r0["artists"], r1["artists"]
    assert 1 <= a0["queued"] == min(cfg.artists.budget, r0["rankings"]["hard_cases"]) and a0["delivered"] == 0
    assert (a1["delivered"], a1["refused_deliveries"]) == (a0["queued"], 0)
    assert a1["spend"] == a0["queued"] * cfg.artists.cost_per_mesh and a1["pending"] == a1["queued"]
    assert r1["datasets"]["art3do"]["num_rows"] == a1["delivered"] and r0["datasets"]["art3do"]["num_rows"] == 0
    sft1 = next(r for r in lineage.stage_runs(r1["mlflow_run_id"]) if r.data.tags[lineage.STAGE_TAG] == "sft")
    assert sft1.data.metrics["art3do_examples"] == a1["delivered"]
    assert ("art3do", "input") in {(d["name"], d["context"]) for d in lineage.run_datasets(sft1.info.run_id)}
    assert "artists: " in rounds.round_text(RoundRecord.model_validate(r1))
    # retrieval searches the synthetic mesh library and, from round 1, the winners accepted before
    parents = {
        (p["name"], p["version"])
        for p in Dataset(store, "candidates", r1["datasets"]["candidates"]["version"]).marker["parents"]
    }
    assert r0["datasets"]["sft"]["num_rows"] and ("sft", r0["datasets"]["sft"]["version"]) in parents
    assert not any(
        p["name"] == "sft"
        for p in Dataset(store, "candidates", r0["datasets"]["candidates"]["version"]).marker["parents"]
    )
    # reward-guided best-of-N: round 0 shows what its ensemble proposed; round 1's reward model,
    # trained on round 0's pairs and the artists' meshes, picks N of oversample x N proposals
    assert "reward_pairs" not in r0["best_of_n"] and r0["best_of_n"]["proposed_per_object"] == 4
    assert r0["best_of_n"]["shown_yield"] == r0["best_of_n"]["proposed_yield"]
    b1 = r1["best_of_n"]
    assert b1["proposed_per_object"] == 4 * cfg.reward.oversample and r1["volumes"]["candidates"] == 12
    assert b1["reward_pairs"] + b1["reward_heldout_pairs"] == r0["volumes"]["preferences"] + b1["reward_artist_pairs"]
    # artists deliver round 0's cases in round 1's close: round 2's reward model would see them
    assert b1["reward_artist_pairs"] == r0["datasets"]["art3do"]["num_rows"] == 0
    assert b1["shown_yield"] <= b1["proposed_yield"] and b1["random_yield"] <= b1["proposed_yield"]
    assert b1["hard_objects"] == 1 and "reward-guided best-of-N from 12 proposals per object" in rounds.round_text(
        RoundRecord.model_validate(r1)
    )
    reward_run = next(
        r for r in lineage.stage_runs(r1["mlflow_run_id"]) if r.data.tags[lineage.STAGE_TAG] == "reward-model"
    )
    assert reward_run.data.metrics["pairs"] == b1["reward_pairs"]
    assert {("preferences", "input"), ("candidates", "input")} <= {
        (d["name"], d["context"]) for d in lineage.run_datasets(reward_run.info.run_id)
    }
    # DPO holds the pairs of some objects out and reports its implicit accuracy on them
    dpo = next(r for r in lineage.stage_runs(r0["mlflow_run_id"]) if r.data.tags[lineage.STAGE_TAG] == "dpo")
    held = dpo.data.metrics["heldout_pairs"]
    assert dpo.data.metrics["pairs"] + held == r0["volumes"]["preferences"]
    assert held == 0 or 0 <= dpo.data.metrics["heldout_preference_accuracy"] <= 1
    parent = client.get_run(r1["mlflow_run_id"])
    assert parent.data.metrics["accept_rate"] == r1["rankings"]["accept_rate"]
    assert parent.data.tags["flywheel.promoted"] == str(r1["promotion"]["promote"]).lower()
    assert {a.path for a in client.list_artifacts(r1["mlflow_run_id"], "summary")} == {
        "summary/rounds.csv",
        "summary/rounds_summary.png",
    }

    # lineage: from the champion back to the meshes
    tree = "\n".join(lineage.model_tree(cfg, f"sam3d@{r1['challenger']['version']}"))
    for needle in (
        "sft: sft@",
        "preferences: preferences@",
        "rankings@",
        "candidates@",
        "image-pool@",
        "occlusions@",
        "meshes@",
        "warm start:",
        "round bootstrap",
        "iso3do: iso3do@",
    ):
        assert needle in tree, needle

    # a re-run reads the committed rounds back: nothing runs again
    again = flywheel_rounds(2, config=cfg)
    assert [r.model_dump(mode="json") for r in again] == records
    assert _stage_names(r0["mlflow_run_id"]) == stages


def test_rounds_show_in_prefect_as_ops_people_look_at_them(clean: CleanRounds):
    """Through the Prefect API (what the UI shows): the flow run and task runs say what ran
    and carry the series and round tags; each committed round left a summary page and
    tables on the Artifacts tab, with links to MLflow and the round record."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterTags,
        TaskRunFilter,
        TaskRunFilterTags,
    )

    series = rounds.series_id(clean.cfg)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"series:{series}"])))
        # the fixture's run, among other tests' runs of the same series (named for what they ran too)
        [run] = [r for r in runs if str(r.id) == clean.flow_run_id]
        assert run.name == "flywheel-2-rounds", run.name  # not a random name
        assert {"round:0", "round:1", "stage:round"} <= set(run.tags), run.tags
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["round:1"])))
        names = {t.name for t in tasks if str(t.flow_run_id) == clean.flow_run_id}
        assert {"train-sft", "evaluate-champion", "evaluate-challenger", "decide-round-1"} <= names, sorted(names)
        assert any(n.startswith("validate-candidates@") for n in names), sorted(names)
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), type=ArtifactFilterType(any_=["progress"])
            )
        )
        done = {a.description: a.data for a in progress}
        assert done.get(f"training sft, steps: {clean.cfg.model.sft.steps}/{clean.cfg.model.sft.steps}") == 100, done
        assert any(d.startswith("Iso-3DO renders, parts: ") and v == 100 for d, v in done.items()), done
        key = f"series-{series}"
        # the fixture run's own: other tests run more rounds of the same series (on copies of its store)
        ours = ArtifactFilterFlowRunId(any_=[run.id])
        pages = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-round"]), flow_run_id=ours)
        )
        tables = {
            name: client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-{name}"]), flow_run_id=ours)
            )
            for name in ("evaluation", "quarantine")
        }
    assert sorted(a.description for a in pages) == [f"round {k} of series {series}" for k in (0, 1)]
    for page, record in zip(sorted(pages, key=lambda a: a.description or ""), clean.records, strict=True):
        text = str(page.data)
        decision = "PROMOTED" if record["promotion"]["promote"] else "kept the champion"
        assert text.startswith(f"# Round {record['round']}: {decision}"), text[:200]
        assert record["promotion"]["reason"] in text and "champion-vs-constant" in text
        assert f"MLflow round run: run {record['mlflow_run_id']}" in text
        assert f"round record: {clean.store.uri(rounds.record_key(series, record['round']))}" in text
        assert f"models:/sam3d/{record['challenger']['version']}" in text
        for role, ref in record["datasets"].items():
            assert f"| {role} | `{ref['name']}@{ref['version']}` | {ref['num_rows']} |" in text
        pictures = dict(re.findall(r"^- ([^\n]+\.png): `([^`]+)`$", text.split("## Pictures", 1)[-1], re.M))
        assert any(label.endswith("summary/rounds_summary.png") for label in pictures), text
        assert any(label.startswith("sft") and label.endswith("curves/sft_curves.png") for label in pictures), pictures
        assert any(label.endswith("rankings/rankings_report.png") for label in pictures), pictures
        for path in pictures.values():  # each where the page says, an image
            assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    import json

    rows = json.loads(max(tables["evaluation"], key=lambda a: a.created).data)
    assert {(r["half"], r["model"]) for r in rows} >= {("selection", "challenger"), ("reporting", "constant")}
    assert len(tables["quarantine"]) == 2 and all(json.loads(a.data) for a in tables["quarantine"])


def test_round_killed_in_its_last_stage_reruns_only_the_rest(clean: CleanRounds, monkeypatch, tmp_path):
    """SIGKILL the CLI once the challenger is registered (evaluation and promotion remain);
    the dead round's lock is free at once, the re-run redoes only the held-out evaluation and
    the promotion, and commits what the clean run committed."""
    from flows.round import flywheel_round

    root = tmp_path / "store"
    monkeypatch.setenv("FLYWHEEL__STORE__ROOT", str(root))
    cfg = load_config()
    client = mlflow.MlflowClient()
    lineage.configure(cfg)
    known = {v.version for v in client.search_model_versions("name = 'sam3d'")}
    series = rounds.series_id(cfg)
    log = tmp_path / "killed.log"
    proc = subprocess.Popen(
        [BIN / "flywheel", "run"],
        env=cli_env(root),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    store = store_for(cfg)
    deadline = time.monotonic() + 400

    def registered_challenger() -> bool:  # the second registration: bootstrap, then challenger
        return (
            sum(
                "Task run 'register-sam3d" in line and "Completed" in line
                for line in log.read_text(errors="replace").splitlines()
            )
            >= 2
        )

    while not registered_challenger():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the round did not reach its last stage in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert rounds.read_round(store, series, 0) is None, "killed too late: the round committed"
    parent = client.search_runs(
        [lineage.configure(cfg)],
        filter_string=f"tags.`{lineage.ROUND_TAG}` LIKE 'round-0-%' and tags.`{lineage.STAGE_TAG}` = 'round'",
        order_by=["attributes.start_time DESC"],
    )
    before = {r.info.run_id for r in lineage.stage_runs(parent[0].info.run_id)}
    left_running = {
        r.info.run_id: r.data.tags[lineage.STAGE_TAG]
        for r in lineage.stage_runs(parent[0].info.run_id)
        if r.info.status == "RUNNING"
    }

    started = time.monotonic()
    record = flywheel_round(0).model_dump(mode="json")
    rerun_s = time.monotonic() - started
    new = [
        r.data.tags[lineage.STAGE_TAG]
        for r in lineage.stage_runs(record["mlflow_run_id"])
        if r.info.run_id not in before
    ]
    assert not TRAINING_STAGES & set(new), f"finished training stages ran again: {new}"
    # the killed process's stage runs are marked KILLED, each re-run says it is a later attempt
    after = {r.info.run_id: r for r in lineage.stage_runs(record["mlflow_run_id"])}
    assert not [r for r in after.values() if r.info.status == "RUNNING"]
    for run_id, name in left_running.items():
        assert after[run_id].info.status == "KILLED" and "flywheel.superseded" in after[run_id].data.tags
        retry = [r for r in after.values() if r.info.run_id not in before and r.data.tags[lineage.STAGE_TAG] == name]
        assert [r.data.tags[lineage.ATTEMPT_TAG] for r in retry] == ["2"], name
    assert "evaluate-challenger" in new
    assert _comparable(record) == _comparable(clean.records[0])
    # training is deterministic: the same checkpoints, found in the registry, not registered again
    assert {v.version for v in client.search_model_versions("name = 'sam3d'")} == known
    print(f"re-run after a last-stage kill: {rerun_s:.0f} s")


def test_two_rounds_at_once_one_waits_and_one_is_refused(clean: CleanRounds, tmp_path):
    """Two CLI runs of the next round start together: one runs it, the other waits for the
    lock and then finds it committed; a third that will not wait is refused with exit 1."""
    store = clean.store
    root = Path(store.root)
    cfg = load_config(environ={**os.environ, "FLYWHEEL__STORE__ROOT": str(root)})
    series = rounds.series_id(cfg)
    env = cli_env(root)
    logs = [tmp_path / f"run-{i}.log" for i in range(3)]
    procs = [
        subprocess.Popen(
            [BIN / "flywheel", "run", "--rounds", "3"], env=env, stdout=open(logs[i], "wb"), stderr=subprocess.STDOUT
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 300
    while not any(
        "resuming MLflow run" in p.read_text(errors="replace") or "Task run" in p.read_text(errors="replace")
        for p in logs[:2]
    ):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.2)
    refused = subprocess.run(
        [BIN / "flywheel", "run", "--rounds", "3"],
        env={**env, "FLYWHEEL__ROUNDS__LOCK_WAIT_S": "0"},
        stdout=open(logs[2], "wb"),
        stderr=subprocess.STDOUT,
        timeout=300,
    )
    codes = [p.wait(timeout=400) for p in procs]
    texts = [p.read_text(errors="replace") for p in logs]
    assert codes == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    assert refused.returncode == 1 and "another flywheel round or synth is running" in texts[2]
    assert sum("round 2 of series" in t and "committed already" in t for t in texts[:2]) == 1
    history = rounds.committed_rounds(store, series)
    assert [r.round for r in history] == [0, 1, 2]
    stages = _stage_names(history[2].mlflow_run_id)
    assert stages.count("sft") == 1 and stages.count("evaluate-challenger") == 1  # ran once
