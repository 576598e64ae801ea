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
import pyarrow as pa

from flywheel.aggregate import judge_round
from flywheel.config import AnnotatorSettings, FlywheelConfig
from flywheel.contracts import HARD_CASES, PREFERENCES, RANKINGS, SFT
from flywheel.datasets import Dataset, DatasetRef, DatasetWriter, committed_ref, digest_of, list_versions, version_of
from flywheel.models import file_digest
from flywheel.plots import rankings_report
from flywheel.rankings import ExportError, check, from_label_studio, read_native, resubmissions
from flywheel.simulate import candidate_records, simulate, truths_for_pool
from flywheel.store import read_uri
from tasks.conventions import flywheel_task, log_datasets, stage, store_for, writer_options

log = logging.getLogger(__name__)


def latest_rankings(cfg: FlywheelConfig) -> DatasetRef | None:
    versions = list_versions(store_for(cfg), RANKINGS.name)
    return Dataset(store_for(cfg), RANKINGS.name, versions[-1]["version"]).ref if versions else None


def export_digests(cfg: FlywheelConfig, files: list[str]) -> list[str]:
    """sha256 of each export (the flow pins them: they are in the ingest task's cache key)."""
    return [file_digest(f) if not f.startswith("s3://") else hashlib.sha256(read_uri(f, cfg.store)).hexdigest()
            for f in files]


@flywheel_task(name="ingest-rankings", version="2")
def ingest_rankings(cfg: FlywheelConfig, files: list[str], digests: list[str], candidates: DatasetRef,
                    previous: DatasetRef | None, settings: dict, parent_run_id: str | None = None) -> DatasetRef:
    """Archive and check ``files`` against the candidate registry; commit the next version."""
    store = store_for(cfg)
    done = set(Dataset(store, previous.name, previous.version).marker["inputs"]["files"]) if previous else set()
    new = [(f, d) for f, d in zip(files, digests) if d not in done]
    with stage(cfg, parent_run_id, "ingest-rankings", params={"files": len(files), "new_files": len(new)}) as run_id:
        if not new and previous is not None:
            log.info("rankings: every export was ingested before; %s is unchanged", previous)
            mlflow.log_metrics({"new_submissions": 0, "replayed_files": len(files)})
            return previous
        inputs = {"files": sorted(done | {d for _, d in new}), "previous": previous, "candidates": candidates,
                  "settings": settings}
        version = version_of(RANKINGS, inputs=inputs, code_version="2")
        ref = committed_ref(store, RANKINGS.name, version)
        if ref is None:
            registry = Dataset(store, candidates.name, candidates.version).manifest().select(
                ["candidate_id", "object_id"]).to_pandas()
            old = Dataset(store, previous.name, previous.version) if previous else None
            tables = [old.manifest().select(RANKINGS.schema.names).cast(RANKINGS.schema)] if old else []
            quarantine = old.quarantine().to_pylist() if old else []
            counts = {"rows": 0, "accepted": 0, "duplicates": 0, "quarantined": 0}
            for uri, digest in new:
                data = read_uri(uri, cfg.store)
                name = Path(uri).name
                store.create_if_absent(f"rankings/raw/{digest}/{name}", data)   # as received, once
                if len(data) > settings["max_file_bytes"]:
                    quarantine.append({"item_id": name, "kind": "file", "reason": "file too large",
                                       "detail": f"{name}: {len(data)} bytes, over {settings['max_file_bytes']}"})
                    continue
                try:
                    raw = from_label_studio(data, name) if name.endswith(".json") else read_native(data, name)
                except ExportError as e:
                    quarantine.append({"item_id": name, "kind": "file", "reason": "unreadable file", "detail": str(e)})
                    continue
                good, bad = check(raw, name, candidates=registry, annotators=settings["annotators"],
                                  max_time_spent_s=settings["max_time_spent_s"])
                duplicates, conflicts = resubmissions(good, pa.concat_tables(tables) if tables else None)
                fresh = ~duplicates & ~conflicts
                for sid in good["submission_id"].filter(pa.array(conflicts)).to_pylist():
                    quarantine.append({"item_id": f"{name}:{sid}", "kind": "ranking",
                                       "reason": "conflicting resubmission",
                                       "detail": f"submission {sid} was ingested before with other contents"})
                counts["rows"] += len(raw)
                counts["duplicates"] += int(duplicates.sum())
                counts["accepted"] += int(fresh.sum())
                counts["quarantined"] += len(bad) + int(conflicts.sum())
                good = good.filter(pa.array(fresh))
                tables.append(good.append_column("source_file", pa.array([digest] * good.num_rows, pa.string()))
                              .cast(RANKINGS.schema))
                quarantine += bad.to_dict("records")
                log.info("%s: %d rows, %d new, %d already ingested, %d quarantined", name, len(raw), int(fresh.sum()),
                         int(duplicates.sum()), len(bad) + int(conflicts.sum()))
            with DatasetWriter(store, RANKINGS, version, inputs=inputs, parents=[candidates] + ([previous] if previous else []),
                               **writer_options(cfg)) as writer:
                if tables:
                    writer.add_table(pa.concat_tables(tables), "submission_id")
                for row in quarantine:
                    writer.quarantine(**row)
            ref = writer.ref
            mlflow.log_metrics({f"export_{k}": v for k, v in counts.items()})
        mlflow.log_metrics({"submissions": ref.num_rows})
        log_datasets(run_id, inputs=[candidates] + ([previous] if previous else []), outputs=[ref])
    return ref


@flywheel_task(name="simulate-annotators", version="1")
def simulate_annotators(cfg: FlywheelConfig, candidates: DatasetRef, pool: DatasetRef, annotators: list[dict],
                        per_object: int, seed: int, parent_run_id: str | None = None) -> str:
    """Judgements of ``candidates`` by simulated annotators (config ``rounds.annotators``) who
    know the pool's ground truth, written as a native export next to the round's annotation
    tasks; returns its URI, which ingestion then reads like any people's export."""
    store = store_for(cfg)
    settings = {"annotators": annotators, "per_object": per_object, "seed": seed}
    key = f"annotation/{candidates.version}/exports/simulated-{digest_of(settings)[:12]}.jsonl"
    with stage(cfg, parent_run_id, "simulate-annotators", params={"annotators": len(annotators),
                                                                  "per_object": per_object}):
        if not store.exists(key):
            team = [AnnotatorSettings.model_validate(a).annotator() for a in annotators]
            rows = simulate(team, candidate_records(store, candidates), truths_for_pool(store, pool),
                            per_object=per_object, seed=seed)
            store.put_bytes(key, "".join(json.dumps(r) + "\n" for r in rows).encode())
            mlflow.log_metrics({"judgements": len(rows)})
    return store.uri(key)


# v2: annotator weights count in the Bradley-Terry fit
@flywheel_task(name="decide", version="2")
def decide_round(cfg: FlywheelConfig, rankings: DatasetRef, candidates: DatasetRef, pool: DatasetRef,
                 round_index: int, rules: dict, parent_run_id: str | None = None) -> dict:
    """Aggregate the judgements and commit the round's SFT, preference (DPO) and hard-case
    datasets; log counts, accept rate, agreement and annotator statistics with a plot."""
    store = store_for(cfg)
    cands = Dataset(store, candidates.name, candidates.version)
    registry = cands.manifest().to_pandas()
    judged = judge_round(Dataset(store, rankings.name, rankings.version).manifest(), registry, round_index, **rules)
    decisions, prefs = judged.decisions, judged.preferences
    accepted = decisions[decisions["decision"] == "accept"]
    hard = decisions[decisions["decision"] == "hard-case"]
    inputs = {"rankings": rankings, "candidates": candidates, "pool": pool, "round": round_index, "rules": rules}
    params = {"round": round_index, "alpha": judged.alpha, **{k: str(v) for k, v in rules.items() if k != "gold"}}
    with stage(cfg, parent_run_id, "decide", params=params) as run_id:
        needed = set(accepted["object_id"]) | set(hard["object_id"]) | set(prefs["object_id"])
        images = {s["__key__"]: s for s in Dataset(store, pool.name, pool.version).samples(keys=sorted(needed))}
        wanted = set(accepted["winner"]) | set(prefs["loser"])
        occ = {s["__key__"]: s["occ.npy"] for s in cands.samples(keys=sorted(wanted))}
        rows = registry.set_index("candidate_id")
        refs = {}
        specs = ((SFT, accepted), (PREFERENCES, prefs), (HARD_CASES, hard))
        for spec, frame in specs:
            version = version_of(spec, inputs=inputs, code_version="2")
            ref = committed_ref(store, spec.name, version)
            if ref is None:
                with DatasetWriter(store, spec, version, inputs=inputs, parents=[rankings, candidates, pool],
                                   **writer_options(cfg)) as writer:
                    for r in frame.to_dict("records"):
                        image = images[r["object_id"]]
                        files = {"rgb.png": image["rgb.png"], "mask.png": image["mask.png"]}
                        base = {"object_id": r["object_id"], "round": round_index}
                        if spec is SFT:
                            c = rows.loc[r["winner"]]
                            writer.add(r["winner"], {**base, "score": r["score"], "candidate_id": r["winner"],
                                                     "confidence": r["confidence"], "R": list(c["R"]),
                                                     "t": list(c["t"]), "s": float(c["s"])},
                                       {**files, "occ.npy": occ[r["winner"]]})
                        elif spec is PREFERENCES:
                            writer.add(f"{r['winner']}-{r['loser']}",
                                       {**base, "score": r["score"], "winner": r["winner"], "loser": r["loser"],
                                        "times": r["times"]},
                                       {**files, "winner.npy": occ[r["winner"]], "loser.npy": occ[r["loser"]]})
                        else:
                            writer.add(r["object_id"], {**base, "judgements": r["judgements"], "rejects": r["rejects"],
                                                        "reject_share": r["reject_share"]}, files)
                ref = writer.ref
            refs[spec.name] = ref
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
    return {"metrics": metrics, "datasets": {k: v.to_dict() for k, v in refs.items()}}
