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
    """Ingest annotation exports (native .jsonl/.csv/.parquet; Label Studio JSON, JSON_MIN
    or CSV) for a candidates version (default: the newest) and commit round ``round_index``'s
    SFT, preference and hard-case datasets. ``label_configs``: file -> the labeling config
    (XML) of the Label Studio project it was exported from (default: the shipped templates).
    ``config``: a config or a config file; None loads the worker's."""
    cfg = flow_config(config)
    ref = candidates_ref(cfg, candidates)
    previous = latest_ref(cfg, RANKINGS.name)
    return run_locked(
        cfg,
        f"rankings-r{round_index}",
        lambda c, parent: ingest_and_decide(c, parent, files, ref, round_index, previous, label_configs)[0],
        ("rankings",),
    )
