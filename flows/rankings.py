"""The close stage's first half: judgements in, decisions out.

exports ─> ingest (archive raw, check, count once) ─> gate ─> decide (Bradley–Terry,
annotator quality, alpha_k) ─> SFT / preference (DPO) / hard-case datasets ─> gates
"""

from __future__ import annotations

from prefect import flow

from flows.stages import candidates_ref, flow_config, ingest_and_decide, latest_ref, run_locked
from flywheel.core.config import FlywheelConfig
from flywheel.core.contracts import RANKINGS
from flywheel.core.records import RunSummary


@flow(name="rankings", log_prints=True)
def rankings(
    files: list[str],
    candidates: str | None = None,
    round_index: int = 0,
    config: FlywheelConfig | str | None = None,
    label_configs: dict[str, str] | None = None,
) -> RunSummary:
    """Ingest annotation exports and commit round ``round_index``'s SFT, preference and
    hard-case datasets.

    Args:
        files: The exports to ingest: local paths or s3:// URIs of native .jsonl / .csv /
            .parquet files or Label Studio JSON, JSON_MIN or CSV exports.
        candidates: The candidates version the exports judge (NAME@VERSION or VERSION).
            Empty: the newest committed candidates.
        round_index: The round these judgements close (0, 1, ...).
        config: The flywheel config: a config object, or the path of a YAML file on the worker
            (over configs/default.yaml, then FLYWHEEL__* environment variables). Empty: the
            worker's own config.
        label_configs: For Label Studio exports: export file -> the labeling config (XML) of the
            project it came from. Empty: the shipped templates.
    """
    cfg = flow_config(config)
    ref = candidates_ref(cfg, candidates)
    previous = latest_ref(cfg, RANKINGS.name)
    return run_locked(
        cfg,
        f"rankings-r{round_index}",
        lambda c, parent: ingest_and_decide(c, parent, files, ref, round_index, previous, label_configs)[0],
        ("rankings",),
        {"stage": "rankings", "round": str(round_index)},
    )
