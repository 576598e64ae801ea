"""Flywheel rounds.

    every round:    the held-out sets' mesh libraries (no library to train on holds their meshes)
    round 0 first:  synthetic data ─> VAE ─> pre-train (Iso-3DO) ─> mid-train (FO) ─> register = champion
    propose(k):     round-k images (new objects, none held out) ─> gate ─> reward model (preferences so far, artists' meshes)
                    ─> proposals from the champion's ensemble (oversampled with a reward model) ─> gate
                    ─> candidates (the reward model's top N, some at random) ─> gate ─> tasks
    close(k):       judgements (simulated, or given exports) ─> ingest ─> gate ─> decide ─> gates
                    ─> hard cases to the artist queue ─> deliveries due ─> Art-3DO ─> gate
                    ─> SFT (accepted data + Art-3DO + synthetic replay, curriculum) ─> DPO ─> [distill]
                    ─> register challenger ─> evaluate both on the held-out set
                    ─> [first round of a series: SFT's training-seed noise] ─> promote or keep
                    ─> round record + summary
    round(k) = propose(k) + close(k); ``flywheel run --rounds N`` runs rounds 0..N-1, skipping
    committed ones.

Round k starts from the champion round k-1 ended with (see flywheel.rounds.ledger); one
round runs at a time (flywheel.rounds.ledger.round_lock); every step is a cached task, so a
failed round re-run redoes only what did not finish.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow

from flows.stages import (
    all_synthetic,
    artist_path,
    candidates,
    composites,
    flow_config,
    heldout_libraries,
    heldout_worlds,
    image_pool,
    ingest_and_decide,
    occlusions,
    publish,
    reward_model,
    round_artifacts,
    run_round,
    with_fields,
    world_config,
)
from flywheel.core.config import SHAPING_SECTIONS, FlywheelConfig
from flywheel.core.records import CheckpointRef, DatasetRef, ModelRef, RewardRef, RunSummary
from flywheel.learning.architecture import model_architecture
from flywheel.learning.ensemble import EARLIER_CHAMPION
from flywheel.learning.heldout import (
    SeedNoise,
    baseline_warnings,
    family_report,
    heldout_reports,
    seed_noise,
    split_report,
)
from flywheel.learning.stages import stage_settings
from flywheel.rounds import ledger
from flywheel.rounds.promotion import promotion
from flywheel.rounds.record import RoundRecord
from flywheel.tracking.registry import describe_version, set_alias
from tasks.conventions import store_for
from tasks.rankings import oracle_best_of_n, simulate_annotators
from tasks.training import evaluate_baselines, evaluate_model, register_model, train_stage


@dataclass
class Round:
    """One round in progress: its config, MLflow parent run, index, series and the round before."""

    cfg: FlywheelConfig
    parent: str
    k: int
    series: str
    previous: RoundRecord | None
    reward: RewardRef | None = None
    held_out: tuple[DatasetRef, ...] = ()  # the held-out sets' mesh libraries
    seconds: dict[str, float] = field(default_factory=dict)
    _clock: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 2)
        self._clock = now


def bootstrap(
    cfg: FlywheelConfig, parent: str, synthetic: list[DatasetRef], series: str, heldout: DatasetRef
) -> ModelRef:
    """A first champion from synthetic data alone: VAE, the image encoder, pre-training on
    Iso-3DO, mid-training on Flying Occlusions (learning curves on ``heldout``)."""
    _, iso, fo = synthetic
    architecture = model_architecture(cfg.model).model_dump(mode="json")
    checkpoint = None
    stages = [
        (stage, data)
        for stage, data in (
            ("vae", {"iso3do": [iso]}),
            ("encoder", {"iso3do": [iso], "occlusions": [fo]}),
            ("pretrain", {"iso3do": [iso]}),
            ("midtrain", {"occlusions": [fo]}),
        )
        if getattr(cfg.model, stage).steps
    ]
    for stage, data in stages:
        checkpoint = train_stage(
            cfg,
            stage,
            checkpoint,
            data,
            stage_settings(cfg.model, stage),
            architecture,
            heldout,
            cfg.rounds.world.mask_error,
            parent_run_id=parent,
        )
    if checkpoint is None:
        raise ValueError("model: vae, encoder, pretrain and midtrain all have steps 0; nothing to bootstrap")
    return register_model(
        cfg,
        checkpoint,
        cfg.candidates.registered_model,
        {"iso3do": [iso], "occlusions": [fo]},
        {"flywheel.series": series, "flywheel.round": "bootstrap", "flywheel.stages": ",".join(s for s, _ in stages)},
        parent_run_id=parent,
    )


def propose_round(r: Round, champion: ModelRef, library: DatasetRef) -> tuple[DatasetRef, DatasetRef]:
    """Round k's images (a fresh library seed per round) -> candidates from the champion's
    ensemble (and the champion it replaced), picked by the reward model of the preferences so
    far (from round 1); retrieval searches ``library`` and the shapes earlier rounds accepted
    or artists made."""
    cfg = r.cfg
    history = ledger.committed_rounds(store_for(cfg), r.series)
    r.reward = reward_model(cfg, r.parent, champion, history)
    libraries = [library]
    if r.previous:
        art3do = r.previous.datasets.get("art3do")
        libraries += [d for d in (*r.previous.sft_history, *([art3do] if art3do else [])) if d.num_rows]
    rules = cfg.rounds
    world = world_config(cfg, rules.pool_seed + r.k, rules.library_meshes, rules.pool_objects)
    fo = composites(world, r.parent, held_out=r.held_out)
    pool = image_pool(cfg, r.parent, source=f"occlusions@{fo.version}", mask_error=cfg.rounds.world.mask_error)
    models = {**cfg.candidates.models, "champion": champion.uri}
    earlier = next((h.champion_before for h in reversed(history) if h.champion_before.uri != champion.uri), None)
    if earlier is not None:  # the champion this one replaced proposes too (members of EARLIER_CHAMPION)
        models[EARLIER_CHAMPION] = earlier.uri
    pinned = with_fields(cfg, "candidates", models=models)
    proposals = candidates(pinned, pool, r.parent, libraries=libraries, reward=r.reward)
    publish(cfg, proposals, pool, r.parent)
    return pool, proposals


def close_round(
    r: Round,
    champion: ModelRef,
    pool: DatasetRef,
    proposals: DatasetRef,
    replay: DatasetRef,
    heldout: DatasetRef,
    files: list[str] | None = None,
) -> RoundRecord:
    """Judgements -> datasets -> retrain from the champion -> evaluate -> promote; the round record."""
    cfg, parent, k = r.cfg, r.parent, r.k
    if files is None:
        files = [
            simulate_annotators(
                cfg,
                proposals,
                pool,
                [a.model_dump() for a in cfg.rounds.annotators],
                cfg.rounds.judgements_per_object,
                k,
                parent_run_id=parent,
            )
        ]
    prior = r.previous.datasets["rankings"] if r.previous else None
    (judged, sft, prefs, hard), decided = ingest_and_decide(cfg, parent, files, proposals, k, prior)
    r.lap("rankings")
    art3do, artists = artist_path(cfg, parent, r.series, k, hard)
    r.lap("artists")

    accepted = [*(r.previous.sft_history if r.previous else []), sft]
    supervised = {"sft": accepted, "replay": [replay], **({"art3do": [art3do]} if art3do.num_rows else {})}
    checkpoint = champion.checkpoint
    stages = []
    trained = {}
    for stage, data, wanted in (
        ("sft", supervised, True),
        ("dpo", {"preferences": [prefs]}, prefs.num_rows > 0),
        ("distill", supervised, True),
    ):
        if getattr(cfg.model, stage).steps and wanted:
            checkpoint = train_stage(
                cfg,
                stage,
                checkpoint,
                data,
                stage_settings(cfg.model, stage),
                {},
                heldout,
                cfg.rounds.world.mask_error,
                parent_run_id=parent,
            )
            stages.append(stage)
            trained[stage] = checkpoint
    r.lap("retrain")
    challenger = register_model(
        cfg,
        checkpoint,
        cfg.candidates.registered_model,
        {**supervised, "preferences": [prefs], "rankings": [judged], "hard-cases": [hard]},
        {
            "flywheel.series": r.series,
            "flywheel.round": k,
            "flywheel.stages": ",".join(stages),
            "flywheel.warm_start": champion.uri,
        },
        parent_run_id=parent,
    )
    set_alias(cfg, challenger, "challenger")

    rules = cfg.rounds
    error = rules.world.mask_error
    scores = {
        "champion": evaluate_model(cfg, champion, heldout, "champion", error, parent_run_id=parent),
        "challenger": evaluate_model(cfg, challenger, heldout, "challenger", error, parent_run_id=parent),
        **evaluate_baselines(cfg, champion, [replay], heldout, error, parent_run_id=parent),
    }
    reports = heldout_reports(scores)
    synthetic = None
    if r.previous is None and rules.synthetic_eval_objects:  # the bootstrap champion's world gap
        made_alike = occlusions(heldout_worlds(cfg)[1], r.held_out[1], parent)
        synthetic = split_report(
            {
                "champion": evaluate_model(
                    cfg,
                    champion,
                    made_alike,
                    "champion-synthetic",
                    parent_run_id=parent,
                ),
                **evaluate_baselines(cfg, champion, [replay], made_alike, parent_run_id=parent),
            },
            None,
        )
    noise = r.previous.seed_noise if r.previous else None
    if noise is None and rules.seed_noise_seeds > 1 and "sft" in stages:
        noise = measure_seed_noise(r, champion.checkpoint, trained["sft"], supervised, heldout)
    decision = promotion(
        reports["selection"].gains("challenger-vs-champion"),
        metric=rules.promote_metric,
        min_gain=rules.min_gain,
        max_regression=rules.max_regression,
        seed_noise=noise.spread if noise else 0.0,
    )
    after = challenger if decision.promote else champion
    set_alias(cfg, after, "champion")
    means = reports["reporting"].summary
    describe_version(
        cfg,
        challenger,
        f"Round {k} of series {r.series}: {'promoted to champion' if decision.promote else 'not promoted'} "
        f"({decision.reason}). Held-out vIoU (reporting half): "
        + ", ".join(f"{who} {m['viou']:.3f}" for who, m in means.items()),
    )
    r.lap("evaluate")
    made = (pool, proposals, judged, sft, prefs, hard, art3do)
    volumes = {d.name: d.num_rows for d in made}
    volumes["sft-total"] = sum(d.num_rows for d in accepted)
    keep = (
        "accept_rate",
        "objects_judged",
        "accepted",
        "aligned",
        "hard_cases",
        "preference_pairs",
        "annotators",
        "alpha",
        "fleiss_kappa",
    )
    return RoundRecord(
        round=k,
        series=r.series,
        champion_before=champion,
        challenger=challenger,
        champion_after=after,
        promotion=decision,
        evaluation=reports["reporting"].summary,
        heldout=reports,
        best_of_n={  # a number that could not be measured (nan) is left out: records are JSON
            k: v
            for k, v in {
                **oracle_best_of_n(cfg, proposals, pool, parent_run_id=parent),
                **(reward_summary(r.reward) if r.reward else {}),
            }.items()
            if v == v
        },
        warnings=baseline_warnings(reports["reporting"]),
        synthetic_heldout=synthetic,
        heldout_families=family_report(scores),
        heldout_families_rotation=family_report(scores, "rotation_error_deg"),
        seed_noise=noise,
        rankings={key: v for key, v in decided.items() if key in keep or key.startswith("winners_")},
        artists=artists,
        volumes=volumes,
        seconds=r.seconds,
        stages=stages,
        datasets={**{d.name: d for d in made}, "held-out": heldout, "replay": replay},
        sft_history=accepted,
        mlflow_run_id=parent,
    )


def reward_summary(reward: RewardRef) -> dict[str, float]:
    """The reward model's numbers, as the round record's best-of-N section keeps them."""
    return {
        "reward_pairs": float(reward.pairs),
        "reward_artist_pairs": float(reward.artist_pairs),
        "reward_heldout_pairs": float(reward.heldout_pairs),
        "reward_heldout_accuracy": reward.heldout_accuracy,
    }


def measure_seed_noise(
    r: Round, start: CheckpointRef, own: CheckpointRef, data: dict[str, list[DatasetRef]], heldout: DatasetRef
) -> SeedNoise:
    """What reseeding alone does to the gate's metric, once per series: the SFT stage from
    ``start`` on ``data`` with each of ``rounds.seed_noise_seeds`` training seeds (the first is
    the challenger's own SFT, ``own``; the others are side runs ``sft-seed-N``), each scored on
    the selection half."""
    cfg, rules = r.cfg, r.cfg.rounds
    settings = stage_settings(cfg.model, "sft")
    first = settings["seed"]
    checkpoints = {first: own}
    for seed in range(first + 1, first + rules.seed_noise_seeds):
        checkpoints[seed] = train_stage(
            cfg, "sft", start, data, {**settings, "seed": seed}, {}, label=f"sft-seed-{seed}", parent_run_id=r.parent
        )
    scores = {
        seed: evaluate_model(
            cfg,
            checkpoint,
            heldout,
            f"sft-seed-{seed}",
            rules.world.mask_error,
            "selection",
            parent_run_id=r.parent,
        )
        for seed, checkpoint in checkpoints.items()
    }
    return seed_noise("sft", rules.promote_metric, "selection", scores, r.k)


def _log_summary(cfg: FlywheelConfig, parent: str, record: RoundRecord, history: list[RoundRecord]) -> None:
    """The round's numbers on its parent run; the table and plot over all rounds so far."""
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient()
    flat = ledger.summary_rows([record])[0]
    client.log_batch(
        parent,
        metrics=[
            mlflow.entities.Metric(k, float(v), int(time.time() * 1000), record.round)
            for k, v in flat.items()
            if isinstance(v, (int, float)) and v == v
        ],
    )
    for key, value in {
        "flywheel.promoted": str(record.promotion.promote).lower(),
        "flywheel.decision": record.promotion.reason[:500],
        "flywheel.champion_after": record.champion_after.uri,
    }.items():
        client.set_tag(parent, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame(ledger.summary_rows(history)).to_csv(Path(tmp) / "rounds.csv", index=False)
        ledger.summary_plot(history, Path(tmp) / "rounds_summary.png")
        for name in ("rounds.csv", "rounds_summary.png"):
            client.log_artifact(parent, str(Path(tmp) / name), "summary")


def play_round(
    cfg: FlywheelConfig, k: int, files: list[str] | None = None, propose_only: bool = False, name_run: bool = True
) -> RoundRecord | RunSummary:
    """Round k (bootstrapping a champion first for round 0); returns its record (what the
    propose half committed when only that ran). ``name_run``: name the flow run ``round-k``."""
    store, series = store_for(cfg), ledger.series_id(cfg)
    with ledger.round_lock(cfg.state_dir / "rounds.lock", cfg.rounds.lock_wait_s, store):
        done = ledger.read_round(store, series, k)
        if done is not None:
            print(f"round {k} of series {series} is committed already: {done.promotion.reason}")
            return done
        previous = ledger.read_round(store, series, k - 1) if k else None
        if k and previous is None:
            raise ValueError(
                f"round {k}: round {k - 1} of series {series} is not closed; run it first "
                f"(flywheel run --rounds {k + 1} runs every missing round in order)"
            )
        committed: list[RoundRecord] = []

        def body(cfg: FlywheelConfig, parent: str) -> list[DatasetRef]:
            r = Round(cfg, parent, k, series, previous)
            r.held_out = heldout_libraries(cfg, parent)
            synthetic = all_synthetic(cfg, parent, r.held_out)
            heldout = occlusions(heldout_worlds(cfg)[0], r.held_out[0], parent)
            champion = previous.champion_after if previous else bootstrap(cfg, parent, synthetic, series, heldout)
            if not previous:
                set_alias(cfg, champion, "champion")
            r.lap("synthetic_and_bootstrap")
            pool, proposals = propose_round(r, champion, synthetic[0])
            r.lap("propose")
            if propose_only:
                return [pool, proposals]
            record = close_round(r, champion, pool, proposals, synthetic[2], heldout, files)
            _log_summary(cfg, parent, record, [*ledger.committed_rounds(store, series), record])
            record = ledger.write_round(store, record)  # last: the round is committed
            round_artifacts(cfg, record, store.uri(ledger.record_key(series, k)))
            committed.append(record)
            print(ledger.round_text(record))
            print(f"round record: {store.uri(ledger.record_key(series, k))}")
            return [pool, proposals]

        labels = {"stage": "propose" if propose_only else "round", "round": str(k)}
        name = f"round-{k}{'-propose' if propose_only else ''}"
        summary = run_round(cfg, name, body, SHAPING_SECTIONS, labels, name_run)
        return committed[0] if committed else summary


def next_round(cfg: FlywheelConfig) -> int:
    """The first uncommitted round of the configured series."""
    return len(ledger.committed_rounds(store_for(cfg), ledger.series_id(cfg)))


@flow(name="flywheel-round", log_prints=True)
def flywheel_round(
    round_index: int | None = None, files: list[str] | None = None, config: FlywheelConfig | str | None = None
) -> RoundRecord | RunSummary:
    """One whole round: propose, then close with annotation exports (or simulated annotators),
    retrain, evaluate and promote.

    Args:
        round_index: The round to run (0, 1, ...). Empty: the next uncommitted round of the
            configured series.
        files: People's annotation exports that close the round (paths or s3:// URIs; native
            or Label Studio). Empty: the configured simulated annotators judge.
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """
    cfg = flow_config(config)
    return play_round(cfg, next_round(cfg) if round_index is None else round_index, files)


@flow(name="round-propose", log_prints=True)
def round_propose(
    round_index: int | None = None, config: FlywheelConfig | str | None = None
) -> RoundRecord | RunSummary:
    """The propose half of a round: images, candidates from the champion, annotation tasks
    for people.

    Args:
        round_index: The round to propose (0, 1, ...). Empty: the next uncommitted round.
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """
    cfg = flow_config(config)
    return play_round(cfg, next_round(cfg) if round_index is None else round_index, propose_only=True)


@flow(name="round-close", log_prints=True)
def round_close(round_index: int, files: list[str], config: FlywheelConfig | str | None = None) -> RoundRecord:
    """Close a proposed round with people's annotation exports: ingest, retrain, evaluate and
    promote. Its propose half is reused from its cache (run ``propose-round`` first).

    Args:
        round_index: The round the exports judge (0, 1, ...).
        files: The annotation exports (paths or s3:// URIs; native JSONL / CSV / Parquet or
            Label Studio JSON, JSON_MIN, CSV), one or more.
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """
    if not files:
        raise ValueError(f"round-close: round {round_index} needs at least one annotation export in files")
    record = play_round(flow_config(config), round_index, files)
    assert isinstance(record, RoundRecord), "a whole round returns its record"
    return record


@flow(name="flywheel", log_prints=True, flow_run_name="flywheel-{rounds_to_run}-rounds")
def flywheel_rounds(rounds_to_run: int = 1, config: FlywheelConfig | str | None = None) -> list[RoundRecord]:
    """Rounds 0..N-1 in order; committed rounds are read back, not re-run.

    Args:
        rounds_to_run: How many rounds the series should have when this run ends.
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
    """
    cfg = flow_config(config)
    records = [
        record for k in range(rounds_to_run) if isinstance(record := play_round(cfg, k, name_run=False), RoundRecord)
    ]
    print(ledger.summary_text(ledger.committed_rounds(store_for(cfg), ledger.series_id(cfg))))
    return records
