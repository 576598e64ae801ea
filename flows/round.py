"""Flywheel rounds.

    round 0 first:  synthetic data ─> VAE ─> pre-train (Iso-3DO) ─> mid-train (FO) ─> register = champion
    propose(k):     round-k images (new objects) ─> gate ─> candidates from the champion ─> gate ─> tasks
    close(k):       judgements (simulated, or given exports) ─> ingest ─> gate ─> decide ─> gates
                    ─> SFT (accepted data + synthetic replay, curriculum) ─> DPO ─> [distill]
                    ─> register challenger ─> evaluate both on the held-out set ─> promote or keep
                    ─> round record + summary
    round(k) = propose(k) + close(k); ``flywheel run --rounds N`` runs rounds 0..N-1, skipping
    committed ones.

Round k starts from the champion round k-1 ended with (see flywheel.rounds); one round runs
at a time (flywheel.rounds.round_lock); every step is a cached task, so a failed round
re-run redoes only what did not finish.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import flow

from flywheel import rounds
from flywheel.config import FlywheelConfig, load_config
from flywheel.datasets import DatasetRef
from flows.propose import candidates, image_pool, publish
from flows.rankings import ingest_and_decide
from flows.synth import all_synthetic, mesh_library, occlusions, run_round
from sam3d_model.evaluation import promotion
from tasks.conventions import store_for
from tasks.rankings import simulate_annotators
from tasks.training import evaluate_model, register_model, set_alias, train_stage

def _with(cfg: FlywheelConfig, section: str, **fields) -> FlywheelConfig:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=fields)})


def training_settings(cfg: FlywheelConfig, stage: str) -> dict:
    s = getattr(cfg.model, stage)
    out = {"steps": s.steps, "lr": s.lr, "batch_size": s.batch_size, "seed": cfg.model.seed,
           "device": cfg.model.device}
    if stage in ("sft", "distill"):
        out["curriculum"] = list(cfg.model.curriculum)
    if stage == "dpo":
        out["beta"] = cfg.model.dpo_beta
    return out


def composites(cfg: FlywheelConfig, parent: str, seed: int, count: int) -> DatasetRef:
    """Flying-Occlusions composites of a procedural mesh library of their own (``seed``):
    objects that the synthetic training data never showed."""
    held = _with(cfg, "meshes", source=None, seed=seed, num_procedural=cfg.rounds.library_meshes)
    held = _with(held, "occlusions", seed=seed, num_samples=count)
    return occlusions(held, mesh_library(held, parent), parent)


def bootstrap(cfg: FlywheelConfig, parent: str, synthetic: list[DatasetRef], series: str) -> dict:
    """A first champion from synthetic data alone: VAE, pre-training on Iso-3DO, mid-training
    on Flying Occlusions."""
    _, iso, fo = synthetic
    architecture = cfg.model.architecture().model_dump(mode="json")
    checkpoint = None
    for stage, data in (("vae", {"iso3do": [iso]}), ("pretrain", {"iso3do": [iso]}),
                        ("midtrain", {"occlusions": [fo]})):
        if getattr(cfg.model, stage).steps:
            checkpoint = train_stage(cfg, stage, checkpoint, data, training_settings(cfg, stage), architecture,
                                     parent_run_id=parent)
    if checkpoint is None:
        raise ValueError("model: vae, pretrain and midtrain all have steps 0; nothing to bootstrap")
    return register_model(cfg, checkpoint, cfg.candidates.registered_model, {"iso3do": [iso], "occlusions": [fo]},
                          {"flywheel.series": series, "flywheel.round": "bootstrap",
                           "flywheel.stages": "vae,pretrain,midtrain"}, parent_run_id=parent)


def propose_round(cfg: FlywheelConfig, parent: str, k: int, champion: dict, library: DatasetRef) -> list[DatasetRef]:
    """Round k's images (a fresh library seed per round) -> candidates from the champion."""
    fo = composites(cfg, parent, cfg.rounds.pool_seed + k, cfg.rounds.pool_objects)
    pool = image_pool(cfg, parent, source=f"occlusions@{fo.version}")
    pinned = _with(cfg, "candidates", models={**cfg.candidates.models, "champion": champion["uri"]})
    proposals = candidates(pinned, pool, parent, library=library)
    publish(cfg, proposals, pool, parent)
    return [pool, proposals]


def close_round(cfg: FlywheelConfig, parent: str, k: int, champion: dict, pool: DatasetRef,
                proposals: DatasetRef, replay: DatasetRef, previous: dict | None, series: str,
                files: list[str] | None = None) -> dict:
    """Judgements -> datasets -> retrain from the champion -> evaluate -> promote; the round record."""
    r, m = cfg.rounds, cfg.model
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    if files is None:
        files = [simulate_annotators(cfg, proposals, pool, [a.model_dump() for a in r.annotators],
                                     r.judgements_per_object, k, parent_run_id=parent)]
    prior = DatasetRef(**previous["datasets"]["rankings"]) if previous else None
    (judged, sft, prefs, hard), decided = ingest_and_decide(cfg, parent, files, proposals, k, prior)
    lap("rankings")

    accepted = [DatasetRef(**d) for d in (previous or {}).get("sft_history", [])] + [sft]
    name = cfg.candidates.registered_model
    checkpoint = {"uri": champion["uri"], "key": None, "sha256": champion["sha256"]}
    stages = []
    for stage, data, wanted in (("sft", {"sft": accepted, "replay": [replay]}, True),
                                ("dpo", {"preferences": [prefs]}, prefs.num_rows > 0),
                                ("distill", {"sft": accepted, "replay": [replay]}, True)):
        if getattr(m, stage).steps and wanted:
            checkpoint = train_stage(cfg, stage, checkpoint, data, training_settings(cfg, stage), {},
                                     parent_run_id=parent)
            stages.append(stage)
    lap("retrain")
    challenger = register_model(
        cfg, checkpoint, name, {"sft": accepted, "replay": [replay], "preferences": [prefs], "rankings": [judged],
                                "hard-cases": [hard]},
        {"flywheel.series": series, "flywheel.round": k, "flywheel.stages": ",".join(stages),
         "flywheel.warm_start": champion["uri"]}, parent_run_id=parent)
    set_alias(cfg, challenger, "challenger")

    heldout = composites(cfg, parent, r.eval_seed, r.eval_objects)
    scores = {"champion": evaluate_model(cfg, champion, heldout, r.eval_seeds, "champion", parent_run_id=parent),
              "challenger": evaluate_model(cfg, challenger, heldout, r.eval_seeds, "challenger", parent_run_id=parent)}
    decision = promotion(scores["champion"], scores["challenger"], metric=r.promote_metric, min_gain=r.min_gain,
                         max_regression=r.max_regression)
    after = challenger if decision["promote"] else champion
    set_alias(cfg, after, "champion")
    lap("evaluate")
    volumes = {d.name: d.num_rows for d in (pool, proposals, judged, sft, prefs, hard)}
    volumes["sft-total"] = sum(d.num_rows for d in accepted)
    return {"round": k, "series": series, "champion_before": champion, "challenger": challenger,
            "champion_after": after, "promotion": decision, "evaluation": scores,
            "rankings": {key: decided[key] for key in ("accept_rate", "objects_judged", "accepted", "hard_cases",
                                                        "preference_pairs", "annotators", "alpha")}
            | ({"fleiss_kappa": decided["fleiss_kappa"]} if "fleiss_kappa" in decided else {}),
            "volumes": volumes, "seconds": seconds, "stages": stages,
            "datasets": {**{d.name: d.to_dict() for d in (pool, proposals, judged, sft, prefs, hard)},
                         "held-out": heldout.to_dict(), "replay": replay.to_dict()},
            "sft_history": [d.to_dict() for d in accepted]}


def _log_summary(cfg: FlywheelConfig, parent: str, record: dict, history: list[dict]) -> None:
    """The round's numbers on its parent run; the table and plot over all rounds so far."""
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient()
    flat = rounds.summary_rows([record])[0]
    client.log_batch(parent, metrics=[mlflow.entities.Metric(k, float(v), int(time.time() * 1000), record["round"])
                                      for k, v in flat.items() if isinstance(v, (int, float)) and v == v])
    for key, value in {"flywheel.promoted": str(record["promotion"]["promote"]).lower(),
                       "flywheel.decision": record["promotion"]["reason"][:500],
                       "flywheel.champion_after": record["champion_after"]["uri"]}.items():
        client.set_tag(parent, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame(rounds.summary_rows(history)).to_csv(Path(tmp) / "rounds.csv", index=False)
        rounds.summary_plot(history, Path(tmp) / "rounds_summary.png")
        for name in ("rounds.csv", "rounds_summary.png"):
            client.log_artifact(parent, str(Path(tmp) / name), "summary")


def play_round(k: int, files: list[str] | None = None, propose_only: bool = False) -> dict:
    """Round k (bootstrapping a champion first for round 0); returns its record."""
    cfg = load_config()
    store, series = store_for(cfg), rounds.series_id(cfg)
    with rounds.round_lock(cfg.state_dir / "rounds.lock", cfg.rounds.lock_wait_s):
        done = rounds.read_round(store, series, k)
        if done is not None:
            print(f"round {k} of series {series} is committed already: {done['promotion']['reason']}")
            return done
        previous = rounds.read_round(store, series, k - 1) if k else None
        if k and previous is None:
            raise ValueError(f"round {k}: round {k - 1} of series {series} is not closed; run it first "
                             f"(flywheel run --rounds {k + 1} runs every missing round in order)")

        def body(cfg: FlywheelConfig, parent: str) -> list[DatasetRef]:
            started = time.perf_counter()
            synthetic = all_synthetic(cfg, parent)
            champion = previous["champion_after"] if previous else bootstrap(cfg, parent, synthetic, series)
            if not previous:
                set_alias(cfg, champion, "champion")
            before_propose = time.perf_counter()
            pool, proposals = propose_round(cfg, parent, k, champion, synthetic[0])
            proposed = time.perf_counter()
            if propose_only:
                return [pool, proposals]
            record = close_round(cfg, parent, k, champion, pool, proposals, synthetic[2], previous, series, files)
            record["seconds"] = {"synthetic_and_bootstrap": round(before_propose - started, 2),
                                 "propose": round(proposed - before_propose, 2), **record["seconds"]}
            record["mlflow_run_id"] = parent
            _log_summary(cfg, parent, record, [*rounds.committed_rounds(store, series), record])
            record = rounds.write_round(store, series, record)   # last: the round is committed
            uri = store.uri(rounds.record_key(series, k))
            committed["record"] = record
            print(f"round {k}: accept rate {record['rankings']['accept_rate']:.2f}, held-out vIoU champion "
                  f"{record['evaluation']['champion']['viou']:.3f} / challenger "
                  f"{record['evaluation']['challenger']['viou']:.3f} -> "
                  f"{'PROMOTED' if record['promotion']['promote'] else 'kept the champion'} "
                  f"({record['promotion']['reason']}); champion now {record['champion_after']['uri']}")
            print(f"round record: {uri}")
            return [pool, proposals]

        committed: dict = {}
        result = run_round(f"round-{k}{'-propose' if propose_only else ''}", body, rounds.SHAPING_SECTIONS)
        return committed.get("record", result)


def next_round() -> int:
    """The first uncommitted round of the configured series."""
    cfg = load_config()
    return len(rounds.committed_rounds(store_for(cfg), rounds.series_id(cfg)))


@flow(name="flywheel-round", log_prints=True)
def flywheel_round(round_index: int | None = None, files: list[str] | None = None) -> dict:
    """One whole round (default: the next uncommitted one): propose, then close with the given
    annotation exports (default: simulated annotators), retrain, evaluate and promote."""
    return play_round(next_round() if round_index is None else round_index, files)


@flow(name="round-propose", log_prints=True)
def round_propose(round_index: int | None = None) -> dict:
    """The propose half of round k (default: the next uncommitted one): images, candidates
    from the champion, annotation tasks."""
    return play_round(next_round() if round_index is None else round_index, propose_only=True)


@flow(name="flywheel", log_prints=True)
def flywheel_rounds(rounds_to_run: int = 1) -> list[dict]:
    """Rounds 0..N-1 in order; committed rounds are read back, not re-run."""
    records = [play_round(k) for k in range(rounds_to_run)]
    cfg = load_config()
    store = store_for(cfg)
    print(rounds.summary_text(rounds.committed_rounds(store, rounds.series_id(cfg))))
    return records
