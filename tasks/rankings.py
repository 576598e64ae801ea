"""Tasks of the close stage's first half: ingest judgements, then decide (SFT / DPO /
hard cases) with Bradley–Terry aggregation and annotator quality.

Ingestion keeps every export exactly as received (``rankings/raw/<sha256>/<name>``,
create-if-absent: append-only) and commits a new ``rankings`` version = the previous
version's rows + the new submissions. A file already ingested changes nothing; a
submission id already ingested is counted once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from flywheel.core.config import AnnotatorSettings, FlywheelConfig
from flywheel.core.contracts import HARD_CASES, PREFERENCES, RANKINGS, SFT
from flywheel.core.datasets import Dataset, committed_ref, version_of
from flywheel.core.digests import digest_of, file_digest
from flywheel.core.records import DatasetRef
from flywheel.core.store import read_uri
from flywheel.feedback.aggregate import judge_round
from flywheel.feedback.decisions import RoundDecisions, write_decisions
from flywheel.feedback.ingest import ingest_exports
from flywheel.feedback.search import search_report
from flywheel.feedback.simulate import (
    SimulatedAnnotator,
    best_of_n,
    candidate_records,
    simulate,
    truths_for_pool,
)
from flywheel.tracking.plots import rankings_report
from tasks.conventions import flywheel_task, log_datasets, short, stage, store_for, writer_options

log = logging.getLogger(__name__)


def export_digests(cfg: FlywheelConfig, files: list[str]) -> list[str]:
    """sha256 of each export (the flow pins them: they are in the ingest task's cache key)."""
    return [
        file_digest(f) if not f.startswith("s3://") else hashlib.sha256(read_uri(f, cfg.store)).hexdigest()
        for f in files
    ]


# v3: Label Studio exports read through their labeling config (JSON, JSON_MIN, CSV); revisions
@flywheel_task(name="ingest-rankings", version="3", run_name=lambda p: f"ingest-rankings-{len(p['files'])}-files")
def ingest_rankings(
    cfg: FlywheelConfig,
    files: list[str],
    digests: list[str],
    candidates: DatasetRef,
    previous: DatasetRef | None,
    settings: dict,
    label_configs: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> DatasetRef:
    """Archive and check ``files`` against the candidate registry; commit the next version.
    ``label_configs``: file -> labeling config of the Label Studio project it came from."""
    store = store_for(cfg)
    done = set(Dataset(store, previous.name, previous.version).marker["inputs"]["files"]) if previous else set()
    new = [(f, d) for f, d in zip(files, digests) if d not in done]
    with stage(cfg, parent_run_id, "ingest-rankings", params={"files": len(files), "new_files": len(new)}) as run_id:
        if not new and previous is not None:
            log.info("rankings: every export was ingested before; %s is unchanged", previous)
            mlflow.log_metrics({"new_submissions": 0, "replayed_files": len(files)})
            return previous
        configs = {d: digest_of((label_configs or {}).get(f)) for f, d in new if (label_configs or {}).get(f)}
        inputs = {
            "files": sorted(done | {d for _, d in new}),
            "previous": previous,
            "candidates": candidates,
            "settings": settings,
            **({"label_configs": configs} if configs else {}),
        }
        version = version_of(RANKINGS, inputs=inputs, code_version=ingest_rankings.version)
        ref = committed_ref(store, RANKINGS.name, version)
        if ref is None:
            ref, reports = ingest_exports(
                store,
                cfg.store,
                new,
                version=version,
                inputs=inputs,
                candidates=candidates,
                previous=previous,
                settings=settings,
                writer_options=writer_options(cfg),
                label_configs=label_configs,
            )
            mlflow.log_metrics(
                {
                    f"export_{k}": sum(getattr(r, k) for r in reports)
                    for k in ("rows", "accepted", "duplicates", "revised", "skipped")
                }
                | {"export_quarantined": sum(sum(r.quarantined.values()) for r in reports)}
            )
        mlflow.log_metrics({"submissions": ref.num_rows})
        log_datasets(run_id, inputs=[candidates] + ([previous] if previous else []), outputs=[ref])
    return ref


@flywheel_task(
    name="simulate-annotators", version="1", run_name=lambda p: f"simulate-annotators-{short(p['candidates'])}"
)
def simulate_annotators(
    cfg: FlywheelConfig,
    candidates: DatasetRef,
    pool: DatasetRef,
    annotators: list[dict],
    per_object: int,
    seed: int,
    parent_run_id: str | None = None,
) -> str:
    """Judgements of ``candidates`` by simulated annotators (config ``rounds.annotators``) who
    know the pool's ground truth, written as a native export next to the round's annotation
    tasks; returns its URI, which ingestion then reads like any people's export."""
    store = store_for(cfg)
    settings = {"annotators": annotators, "per_object": per_object, "seed": seed}
    key = f"annotation/{candidates.version}/exports/simulated-{digest_of(settings)[:12]}.jsonl"
    with stage(
        cfg, parent_run_id, "simulate-annotators", params={"annotators": len(annotators), "per_object": per_object}
    ):
        if not store.exists(key):
            team = [SimulatedAnnotator.from_settings(AnnotatorSettings.model_validate(a)) for a in annotators]
            rows = simulate(
                team,
                candidate_records(store, candidates),
                truths_for_pool(store, pool),
                per_object=per_object,
                seed=seed,
            )
            store.put_bytes(key, "".join(json.dumps(r) + "\n" for r in rows).encode())
            mlflow.log_metrics({"judgements": len(rows)})
    return store.uri(key)


# v2: yield (share of objects with an acceptable candidate)
@flywheel_task(name="best-of-n", version="2", run_name=lambda p: f"best-of-n-{short(p['candidates'])}")
def oracle_best_of_n(
    cfg: FlywheelConfig, candidates: DatasetRef, pool: DatasetRef, parent_run_id: str | None = None
) -> dict[str, float]:
    """The round's candidates against the pool's ground truth (where it is known): the oracle
    best-of-N vIoU, the yield at ``rounds.acceptable_viou`` and the mean candidate of each kind
    (:func:`flywheel.feedback.simulate.best_of_n`); and what selecting them from the proposals
    was worth against N drawn at random (:func:`flywheel.feedback.search.search_report`)."""
    store = store_for(cfg)
    with stage(cfg, parent_run_id, "best-of-n"):
        truths = truths_for_pool(store, pool)
        shown = candidate_records(store, candidates)
        found = best_of_n(shown, truths, cfg.rounds.acceptable_viou)
        source = next(
            (
                p
                for p in Dataset(store, candidates.name, candidates.version).marker["parents"]
                if p["name"] == "proposals"
            ),
            None,
        )
        if source is not None:
            found |= search_report(
                candidate_records(store, Dataset(store, source["name"], source["version"]).ref),
                {c["candidate_id"] for cands in shown.values() for c in cands},
                truths,
                cfg.candidates.num_candidates,
                cfg.rounds.acceptable_viou,
            )
        mlflow.log_metrics({k: v for k, v in found.items() if v == v})
    return found


# v2: annotator weights count in the Bradley-Terry fit; v3: reject-all share per judgement
@flywheel_task(name="decide", version="3", run_name=lambda p: f"decide-round-{p['round_index']}")
def decide_round(
    cfg: FlywheelConfig,
    rankings: DatasetRef,
    candidates: DatasetRef,
    pool: DatasetRef,
    round_index: int,
    rules: dict,
    parent_run_id: str | None = None,
) -> RoundDecisions:
    """Aggregate the judgements and commit the round's SFT, preference (DPO) and hard-case
    datasets; log counts, accept rate, agreement and annotator statistics with a plot."""
    store = store_for(cfg)
    registry = Dataset(store, candidates.name, candidates.version).manifest().to_pandas()
    judged = judge_round(Dataset(store, rankings.name, rankings.version).manifest(), registry, round_index, **rules)
    decisions, prefs = judged.decisions, judged.preferences
    inputs = {"rankings": rankings, "candidates": candidates, "pool": pool, "round": round_index, "rules": rules}
    params = {"round": round_index, "alpha": judged.alpha, **{k: str(v) for k, v in rules.items() if k != "gold"}}
    with stage(cfg, parent_run_id, "decide", params=params) as run_id:
        refs = write_decisions(
            store,
            accepted=decisions[decisions["decision"] == "accept"],
            preferences=prefs,
            hard=decisions[decisions["decision"] == "hard-case"],
            rankings=rankings,
            candidates=candidates,
            pool=pool,
            round_index=round_index,
            inputs=inputs,
            code_version=decide_round.version,
            writer_options=writer_options(cfg),
        )
        metrics = judged.metrics()
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            judged.annotators.to_csv(Path(tmp) / "annotators.csv", index=False)
            decisions.to_csv(Path(tmp) / "decisions.csv", index=False)
            pd.Series(judged.agreement["cohen"], name="cohen_kappa").to_csv(Path(tmp) / "cohen_kappa.csv")
            for name in ("annotators.csv", "decisions.csv", "cohen_kappa.csv"):
                mlflow.log_artifact(str(Path(tmp) / name), "rankings")
            report = rankings_report(decisions, judged.annotators, Path(tmp) / "rankings_report.png")
            mlflow.log_artifact(str(report), "rankings")
        log_datasets(run_id, inputs=[rankings, candidates, pool], outputs=list(refs.values()))
        log.info("round %d decisions: %s", round_index, metrics)
    return RoundDecisions(
        metrics=metrics, sft=refs[SFT.name], preferences=refs[PREFERENCES.name], hard_cases=refs[HARD_CASES.name]
    )
