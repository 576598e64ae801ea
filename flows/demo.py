"""The demo round: the most complete pipeline available, on the embedded defaults, on CPU.

    make-shapes -> summarise-shapes        (one MLflow parent run, a nested run per stage)

Later stages (rendering, candidates, rankings, retraining) join here as they land.
"""

from __future__ import annotations

from prefect import flow

from flywheel import lineage
from flywheel.config import load_config
from flywheel.datasets import digest_of
from tasks.conventions import ensure_result_storage, prefect_run_ids
from tasks.shapes import make_shapes, summarise_shapes


@flow(name="demo-round", log_prints=True)
def demo_round(num_objects: int | None = None, resolution: int | None = None,
               seed: int | None = None) -> dict:
    cfg = load_config()
    ensure_result_storage(cfg)
    params = {"num_objects": num_objects or cfg.demo.num_objects,
              "resolution": resolution or cfg.demo.grid_resolution,
              "seed": cfg.demo.seed if seed is None else seed}
    round_id = f"demo-{digest_of({**params, 'store': cfg.store_root})[:10]}"
    parent = lineage.start_round(cfg, round_id, params=params, flow_run_id=prefect_run_ids()[0])
    try:
        shapes = make_shapes(cfg, **params, parent_run_id=parent)
        stats = summarise_shapes(cfg, shapes, parent_run_id=parent)
    except BaseException:
        lineage.end_round(parent, failed=True)
        raise
    lineage.end_round(parent)
    print(f"round {round_id}: {shapes} ({shapes.num_rows} objects) -> {stats}; MLflow run {parent}")
    return {"round": round_id, "mlflow_run_id": parent,
            "datasets": [shapes.to_dict(), stats.to_dict()]}
