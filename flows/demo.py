"""The demo round: the most complete pipeline available, on the embedded defaults, on CPU.

    mesh library -> Iso-3DO renders -> Flying Occlusions   (one MLflow round, a run per stage)

Candidates, rankings and retraining join here as they land.
"""

from __future__ import annotations

from prefect import flow

from flows.synth import all_synthetic, run_round


@flow(name="demo-round", log_prints=True)
def demo_round() -> dict:
    """Synthetic data for a round, on the configured sizes (configs/default.yaml)."""
    return run_round("demo", all_synthetic)
