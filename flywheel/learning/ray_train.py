"""A training stage on Ray Train: N data-parallel workers (``model.train_workers``), gloo on
CPU and NCCL on GPU (``model.use_gpu``), checkpoints through Ray Train into the store.

Each worker opens the store itself, streams its own part of the stage's datasets (its
shards, or every W-th sample: :class:`flywheel.learning.examples.ExampleStream`) and runs the
same :func:`flywheel.learning.stages.run_stage` as one process does, on ``batch_size / W``
examples a step; ``sam3d_model.train.fit`` sees ``torch.distributed`` initialised and
averages the workers' gradients. Rank 0
writes the stage's resumable checkpoint and Ray Train copies it to
``<store>/ray-train/<run name>/``; a stage started again under the same run name (the
checkpoint name: everything that shapes the result) resumes from the latest one, as Ray
Train V2 does for a run re-created with the same storage path and name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flywheel.core.config import FlywheelConfig
from flywheel.core.datasets import Dataset
from flywheel.core.records import DatasetRef
from flywheel.core.store import open_store
from flywheel.learning.stages import run_stage
from sam3d_model import train as T
from sam3d_model.checkpoint import read_checkpoint
from sam3d_model.model import SmallSam3D

log = logging.getLogger(__name__)
RUNS_FOLDER = "ray-train"


def storage(cfg: FlywheelConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's run folders in the configured store:
    a local folder, or the store's S3 bucket on its endpoint."""
    root = cfg.store_root.rstrip("/")
    if not root.startswith("s3://"):
        return str(Path(root) / RUNS_FOLDER), None
    import pyarrow.fs

    endpoint = cfg.store.endpoint_url
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
        scheme=endpoint.split("://", 1)[0] if endpoint else "https",
        region=cfg.store.region or "us-east-1",
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )
    return f"{root.removeprefix('s3://')}/{RUNS_FOLDER}", fs


def run_stage_on_ray(
    cfg: FlywheelConfig,
    stage: str,
    model: SmallSam3D,
    datasets: dict[str, list[DatasetRef]],
    settings: dict[str, Any],
    run_name: str,
    log_to: T.TrainLog | None = None,
    probe: T.Probe | None = None,
) -> dict[str, float]:
    """Train ``model`` for one stage with ``cfg.model.train_workers`` Ray Train workers, like
    :func:`run_stage` (same arguments, example counts back); ``model`` ends with the trained
    weights. ``log_to`` and ``probe`` travel to rank 0 (they must pickle)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from flywheel.core.raypool import ensure_ray

    ensure_ray()
    path, fs = storage(cfg)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "cfg": cfg,
            "stage": stage,
            "model": model,
            "datasets": datasets,
            "settings": {**settings, "device": "cuda" if cfg.model.use_gpu else "cpu"},
            "log_to": log_to,
            "probe": probe,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.model.train_workers, use_gpu=cfg.model.use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    log.info(
        "%s: training on Ray Train, %d worker(s) (%s), checkpoints in %s/%s",
        stage,
        cfg.model.train_workers,
        "GPU" if cfg.model.use_gpu else "CPU",
        path,
        run_name,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}: Ray Train run {run_name} ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        model.load_state_dict(read_checkpoint(Path(folder) / "last.pt")["model"])
    model.eval()
    return {k: float(v) for k, v in (result.metrics or {}).items() if k != "step"}


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from the run's latest checkpoint if there is one, train,
    report each checkpoint (rank 0's files: ``last.pt`` and its ``step``) and finally the
    example counts and the step it resumed from."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    cfg: FlywheelConfig = config["cfg"]
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-train-"))
    try:
        resumed_from = 0
        latest = ray.train.get_checkpoint()
        if latest is not None:
            with latest.as_directory() as folder:
                shutil.copyfile(Path(folder) / "last.pt", workdir / "last.pt")
                resumed_from = int((Path(folder) / "step").read_text())

        def report(step: int, path: Path) -> None:
            checkpoint = None
            if rank == 0:
                (path.parent / "step").write_text(str(step))
                checkpoint = ray.train.Checkpoint.from_directory(str(path.parent))
            ray.train.report({"step": step}, checkpoint=checkpoint)

        store = open_store(cfg.store_root, cfg.store)
        counts = run_stage(
            config["stage"],
            config["model"],
            {role: [Dataset(store, r.name, r.version) for r in refs] for role, refs in config["datasets"].items()},
            config["settings"],
            workdir,
            config["log_to"],
            probe=config["probe"],
            after_save=report,
            cache_mb=cfg.model.example_cache_mb,
        )
        # with the final checkpoint again: the run's result carries the metrics of its latest checkpoint
        final = ray.train.Checkpoint.from_directory(str(workdir)) if rank == 0 else None
        ray.train.report({**counts, "resumed_from_step": resumed_from}, checkpoint=final)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
