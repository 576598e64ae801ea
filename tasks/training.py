"""Tasks of the retrain half of a round: training stages, held-out evaluation, model
registration and aliases. The work is in :mod:`flywheel.learning.stages`; a finished stage
is never trained twice — by the Prefect cache, or, without it, by finding its checkpoint.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from flywheel.core.config import FlywheelConfig
from flywheel.core.datasets import Dataset
from flywheel.core.records import CheckpointRef, DatasetRef, ModelRef
from flywheel.learning.examples import cached_examples
from flywheel.learning.heldout import Scores, Split, baseline_scores, load_heldout, score_objects
from flywheel.learning.ray_train import run_stage_on_ray
from flywheel.learning.stages import checkpoint_name, checkpoint_ref, local_checkpoint, run_stage
from flywheel.tracking import lineage
from flywheel.tracking.registry import find_version, register_checkpoint
from flywheel.tracking.training_log import MlflowTrainLog
from sam3d_model.checkpoint import load_model, save_checkpoint
from sam3d_model.config import ModelConfig
from sam3d_model.evaluation import viou_probe
from sam3d_model.model import build_model
from tasks.conventions import FollowedTraining, ProgressTrainLog, flywheel_task, log_datasets, stage, store_for

log = logging.getLogger(__name__)


@flywheel_task(name="train", version="3", run_name=lambda p: f"train-{p.get('label') or p['stage_name']}")
def train_stage(
    cfg: FlywheelConfig,
    stage_name: str,
    init: CheckpointRef | None,
    datasets: dict[str, list[DatasetRef]],
    settings: dict[str, Any],
    architecture: dict[str, Any],
    probe: DatasetRef | None = None,
    probe_mask_error: float = 0.0,
    label: str = "",
    parent_run_id: str | None = None,
) -> CheckpointRef:
    """Train one stage (``vae``, ``pretrain``, ``midtrain``, ``sft``, ``dpo``, ``distill``) from
    ``init`` (None: a new model of ``architecture``) on ``datasets`` (role -> versions);
    returns the checkpoint. ``settings``: see :func:`flywheel.learning.stages.stage_settings`.
    ``probe``: a held-out set whose first :data:`PROBE_OBJECTS` objects draw the stage's
    learning curve (held-out vIoU vs steps, in MLflow); it does not change the checkpoint.
    ``label``: the MLflow run's name when it is not the stage's (a side run, not the model's lineage)."""
    store = store_for(cfg)
    name = checkpoint_name(stage_name, init, datasets, settings, architecture)
    key = f"models/{name}.pt"
    with stage(cfg, parent_run_id, label or stage_name, params={"init": init.uri if init else "new"}) as run_id:
        log_datasets(run_id, inputs=[r for refs in datasets.values() for r in refs])
        mlflow.set_tag("checkpoint", store.uri(key))
        if store.exists(key):
            log.info("%s: already trained (%s)", stage_name, store.uri(key))
            return checkpoint_ref(store, key)
        model = (
            load_model(local_checkpoint(cfg, store, init))
            if init is not None
            else build_model(ModelConfig.model_validate(architecture), settings["seed"])
        )
        workdir = cfg.state_dir / "training" / name
        curve = _probe(store, model.cfg, probe, probe_mask_error) if probe is not None else None
        if cfg.model.train_workers:  # rank 0 reports to MLflow; Prefect's progress follows it from here
            with FollowedTraining(run_id, label or stage_name, int(settings["steps"])):
                counts = run_stage_on_ray(
                    cfg, stage_name, model, datasets, settings, name, MlflowTrainLog(run_id), curve
                )
        else:
            counts = run_stage(
                stage_name,
                model,
                {role: [Dataset(store, r.name, r.version) for r in refs] for role, refs in datasets.items()},
                settings,
                workdir,
                ProgressTrainLog(MlflowTrainLog(run_id), label or stage_name, int(settings["steps"])),
                probe=curve,
                cache_mb=cfg.model.example_cache_mb,
            )
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
        final = save_checkpoint(
            workdir / "model.pt", model, extra={"stage": stage_name, "init_sha256": init.sha256 if init else None}
        )
        store.put_file(key, final)
        return checkpoint_ref(store, key, final)


def _version_description(tags: dict[str, str], datasets: dict[str, list[DatasetRef]]) -> str:
    made = {k.removeprefix("flywheel."): v for k, v in tags.items() if k.startswith("flywheel.")}
    where = "the bootstrap" if made.get("round") == "bootstrap" else f"round {made.get('round', '?')}"
    data = "; ".join(f"{role}: {', '.join(map(str, refs))}" for role, refs in datasets.items())
    return f"Trained in {where} of series {made.get('series', '?')} ({made.get('stages', '?')}) on {data}."


#: Held-out objects of a stage's learning curve (a cheap vIoU-only probe, ~1 s on 2 cores).
PROBE_OBJECTS = 16


def _probe(store, arch: ModelConfig, heldout: DatasetRef, mask_error: float):
    examples = load_heldout(arch, Dataset(store, heldout.name, heldout.version), mask_error).examples
    return viou_probe(examples[:PROBE_OBJECTS])


@flywheel_task(name="evaluate", version="6", run_name=lambda p: f"evaluate-{p.get('label') or 'model'}")
def evaluate_model(
    cfg: FlywheelConfig,
    model: ModelRef | CheckpointRef,
    heldout: DatasetRef,
    label: str = "",
    mask_error: float = 0.0,
    split: Split | None = None,
    parent_run_id: str | None = None,
) -> Scores:
    """A model's metrics (a registered version, or a checkpoint) on every held-out object, or on
    the ``split`` half's (logged to MLflow: the means, and the per-object scores as a table):
    ``rounds.eval_seeds`` predictions per object, each the consensus of ``rounds.eval_samples``
    samples; ``mask_error``: the held-out masks' segmenter errors."""
    store = store_for(cfg)
    seeds, samples = cfg.rounds.eval_seeds, cfg.rounds.eval_samples
    net = load_model(local_checkpoint(cfg, store, model.checkpoint if isinstance(model, ModelRef) else model))
    with stage(
        cfg,
        parent_run_id,
        f"evaluate-{label}" if label else "evaluate",
        params={"model": model.uri, "seeds": seeds, "samples": samples, "split": split or "all"},
    ) as run_id:
        log_datasets(run_id, inputs=[heldout])
        held = load_heldout(net.cfg, Dataset(store, heldout.name, heldout.version), mask_error, split)
        scores = score_objects(net, held, seeds, samples)
        _log_scores(scores)
    return scores


@flywheel_task(name="evaluate-baselines", version="3")
def evaluate_baselines(
    cfg: FlywheelConfig,
    model: ModelRef,
    training: list[DatasetRef],
    heldout: DatasetRef,
    mask_error: float = 0.0,
    parent_run_id: str | None = None,
) -> dict[str, Scores]:
    """The constant-shape and retrieval baselines, fitted on ``training`` (decoded for
    ``model``'s architecture), on every held-out object."""
    store = store_for(cfg)
    arch = load_model(local_checkpoint(cfg, store, model.checkpoint)).cfg
    with stage(cfg, parent_run_id, "evaluate-baselines", params={"model": model.uri}) as run_id:
        log_datasets(run_id, inputs=[*training, heldout])
        examples = cached_examples(arch, [Dataset(store, r.name, r.version) for r in training])
        held = load_heldout(arch, Dataset(store, heldout.name, heldout.version), mask_error)
        scores = baseline_scores(examples, held)
        for who, s in scores.items():
            mlflow.log_metrics({f"{who}_{k}": v for k, v in s.summary().items() if v == v})
    return scores


def _log_scores(scores: Scores) -> None:
    mlflow.log_metrics({k: v for k, v in scores.summary().items() if v == v})  # NaN is not logged
    rows = [{"mesh_id": m, **o} for m, o in zip(scores.mesh_ids, scores.objects)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heldout_objects.json"
        path.write_text(json.dumps(rows, indent=1))
        mlflow.log_artifact(str(path), "evaluation")


@flywheel_task(name="register-model", version="2", run_name=lambda p: f"register-{p['name']}")
def register_model(
    cfg: FlywheelConfig,
    checkpoint: CheckpointRef,
    name: str,
    datasets: dict[str, list[DatasetRef]],
    tags: dict[str, Any],
    parent_run_id: str | None = None,
) -> ModelRef:
    """A registry version for ``checkpoint`` (the existing one if this checkpoint is already
    registered under ``name``), tagged with the round and with the datasets that made it
    (``dataset.<role>`` = ``name@version[,...]``, what ``flywheel lineage`` follows); its run
    logs those datasets as inputs."""
    found = find_version(cfg, name, checkpoint.sha256)
    if found is None:
        tags = {
            **{k: str(v) for k, v in tags.items()},
            **{f"dataset.{role}": ",".join(str(r) for r in refs) for role, refs in datasets.items()},
        }
        with stage(cfg, parent_run_id, f"register-{name}", params={"checkpoint": checkpoint.uri}) as run_id:
            log_datasets(run_id, inputs=[r for refs in datasets.values() for r in refs])
            register_checkpoint(
                cfg,
                local_checkpoint(cfg, store_for(cfg), checkpoint),
                # The version's source is the run that trained it (its curves, params, datasets).
                run_id=lineage.training_run(cfg, checkpoint.uri) or run_id,
                name=name,
                tags=tags,
                metadata={"preset": cfg.model.preset, "checkpoint_uri": checkpoint.uri},
                description=_version_description(tags, datasets),
            )
        found = find_version(cfg, name, checkpoint.sha256)
        assert found is not None, f"model {name}: the version just registered is not found"
    return found
