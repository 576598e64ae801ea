"""The close stage's first half: judgements in, decisions out.

    exports ─> ingest (archive raw, check, count once) ─> gate ─> decide (Bradley–Terry,
    annotator quality, alpha_k) ─> SFT / preference (DPO) / hard-case datasets ─> gates
"""

from __future__ import annotations

from prefect import flow

from flywheel.config import FlywheelConfig, load_config
from flywheel.datasets import Dataset, DatasetRef, list_versions
from flows.synth import run_round
from tasks.conventions import store_for
from tasks.rankings import decide_round, export_digests, ingest_rankings, latest_rankings
from tasks.validation import gate_for


def candidates_ref(cfg: FlywheelConfig, version: str | None) -> DatasetRef:
    store = store_for(cfg)
    if version is None:
        versions = list_versions(store, "candidates")
        if not versions:
            raise ValueError(f"no candidates in {cfg.store_root}: run `flywheel propose` first")
        version = versions[-1]["version"]
    return Dataset(store, "candidates", version).ref


def ingest_and_decide(cfg: FlywheelConfig, parent: str, files: list[str], candidates: DatasetRef,
                      round_index: int, previous: DatasetRef | None) -> tuple[list[DatasetRef], dict]:
    """Add ``files`` to the ``previous`` rankings version and decide round ``round_index``.
    -> ([rankings, sft, preferences, hard-cases], the decision metrics)"""
    r = cfg.rankings
    settings = {"annotators": sorted(r.annotators) if r.annotators is not None else None,
                "max_file_bytes": int(r.max_file_mb * 2**20), "max_time_spent_s": r.max_time_spent_s}
    judged = ingest_rankings(cfg, files, export_digests(cfg, files), candidates, previous, settings,
                             parent_run_id=parent)
    gate_for(cfg, judged, parent)
    pool = next(p for p in Dataset(store_for(cfg), candidates.name, candidates.version).marker["parents"]
                if p["name"] == "image-pool")
    pool_ref = Dataset(store_for(cfg), pool["name"], pool["version"]).ref
    decided = decide_round(cfg, judged, candidates, pool_ref, round_index, r.rules(), parent_run_id=parent)
    outputs = [Dataset(store_for(cfg), d["name"], d["version"]).ref for d in decided["datasets"].values()]
    for ref in outputs:
        gate_for(cfg, ref, parent)
    return [judged, *outputs], decided["metrics"]


@flow(name="rankings", log_prints=True)
def rankings(files: list[str], candidates: str | None = None, round_index: int = 0) -> dict:
    """Ingest annotation exports (native .jsonl/.csv/.parquet, Label Studio .json) for a
    candidates version (default: the newest) and commit round ``round_index``'s SFT,
    preference and hard-case datasets."""
    cfg = load_config()
    ref = candidates_ref(cfg, candidates)
    return run_round(f"rankings-r{round_index}",
                     lambda c, parent: ingest_and_decide(c, parent, files, ref, round_index, latest_rankings(c))[0], ("rankings",))
