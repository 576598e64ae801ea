"""Tasks of the retrain half of a round: training stages, held-out evaluation, model
registration and aliases.

A training task's output is a checkpoint in the dataset store under ``models/``, named by
the digest of everything that shapes it (stage, starting checkpoint, dataset versions,
settings, architecture), so a finished stage is never trained twice — by the Prefect
cache, or, without it, by finding the file. While it trains, its resumable state lives in
``<state_dir>/training/<name>/``: a killed stage resumes at its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import mlflow

from flywheel.config import FlywheelConfig
from flywheel.datasets import Dataset, DatasetRef, digest_of
from flywheel.models import file_digest, register_checkpoint, resolve_model
from sam3d_model import train as T
from sam3d_model.checkpoint import load_model, save_checkpoint
from sam3d_model.config import ModelConfig
from sam3d_model.data import batch_stream, cached_examples, curriculum_stream
from sam3d_model.evaluation import evaluate
from sam3d_model.model import build_model
from tasks.conventions import flywheel_task, log_datasets, stage, store_for

log = logging.getLogger(__name__)

#: stage -> the dataset roles it reads (``replay``: synthetic data mixed into SFT / distillation)
STAGE_INPUTS = {"vae": ("iso3do",), "pretrain": ("iso3do",), "midtrain": ("occlusions",),
                "sft": ("sft", "replay"), "dpo": ("preferences",), "distill": ("sft", "replay")}


def checkpoint_ref(store, key: str, local: Path | None = None) -> dict:
    """{uri, key, sha256} of a checkpoint in the store (``local``: a copy to hash instead)."""
    local = local or store.local_path(key)
    sha = file_digest(local) if local is not None else hashlib.sha256(store.get_bytes(key)).hexdigest()
    return {"uri": store.uri(key), "key": key, "sha256": sha}


def local_checkpoint(cfg: FlywheelConfig, ref: dict) -> Path:
    """A local file for a checkpoint reference: a store checkpoint or a registry model."""
    if ref["uri"].startswith("models:/"):
        return resolve_model(cfg, ref["uri"]).path
    store = store_for(cfg)
    local = store.local_path(ref["key"])
    if local is None:
        local = cfg.state_dir / "models" / f"{ref['sha256']}.pt"
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_suffix(".tmp")
            tmp.write_bytes(store.get_bytes(ref["key"]))
            tmp.replace(local)
    if file_digest(local) != ref["sha256"]:
        raise ValueError(f"checkpoint {ref['uri']}: sha256 differs from the reference {ref['sha256'][:12]}")
    return local


def _examples(cfg: FlywheelConfig, arch: ModelConfig, refs: list[DatasetRef]) -> list[dict]:
    store = store_for(cfg)
    return cached_examples(arch, [Dataset(store, r.name, r.version) for r in refs])


@flywheel_task(name="train", version="3")
def train_stage(cfg: FlywheelConfig, stage_name: str, init: dict | None, datasets: dict[str, list[DatasetRef]],
                settings: dict, architecture: dict, parent_run_id: str | None = None) -> dict:
    """Train one stage (``vae``, ``pretrain``, ``midtrain``, ``sft``, ``dpo``, ``distill``) from
    ``init`` (a checkpoint reference; None: a new model of ``architecture``) on ``datasets``
    (role -> versions, roles per :data:`STAGE_INPUTS`); returns the checkpoint reference.

    ``settings``: steps, lr, batch_size, seed, device, and per stage curriculum / beta."""
    unknown = set(datasets) - set(STAGE_INPUTS[stage_name])
    if unknown:
        raise ValueError(f"stage {stage_name}: unexpected dataset roles {sorted(unknown)}")
    store = store_for(cfg)
    # "seeded": new models are initialised from settings.seed (before: from torch's global state)
    name = f"{stage_name}-" + digest_of({"stage": stage_name, "init": init and init["sha256"] or "seeded",
                                         "datasets": {k: [r.version for r in v] for k, v in datasets.items()},
                                         "settings": settings, "architecture": architecture})[:24]
    key = f"models/{name}.pt"
    workdir = cfg.state_dir / "training" / name
    with stage(cfg, parent_run_id, stage_name, params={"init": init["uri"] if init else "new"}) as run_id:
        log_datasets(run_id, inputs=[r for refs in datasets.values() for r in refs])
        mlflow.set_tag("checkpoint", store.uri(key))
        if store.exists(key):
            log.info("%s: already trained (%s)", stage_name, store.uri(key))
            return checkpoint_ref(store, key)
        if init is None:
            model = build_model(ModelConfig.model_validate(architecture), settings["seed"])
        else:
            model = load_model(local_checkpoint(cfg, init))
        arch = model.cfg
        train = T.TrainSettings(steps=settings["steps"], lr=settings["lr"], seed=settings["seed"],
                                device=settings["device"], log_every=max(1, settings["steps"] // 20),
                                checkpoint_every=max(10, settings["steps"] // 5), warmup_steps=10)
        batch, seed = settings["batch_size"], settings["seed"]
        fit = {"checkpoint_dir": workdir, "run_id": run_id}
        if stage_name in ("vae", "pretrain", "midtrain"):
            examples = _examples(cfg, arch, next(iter(datasets.values())))
            stream = batch_stream(lambda: examples, batch, seed)
            getattr(T, {"vae": "train_vae", "pretrain": "pretrain", "midtrain": "midtrain"}[stage_name])(
                model, stream, train, **fit)
        elif stage_name in ("sft", "distill"):
            real = _examples(cfg, arch, datasets.get("sft", []))
            replay = _examples(cfg, arch, datasets.get("replay", []))
            stream = curriculum_stream(real, replay, settings["curriculum"], train.steps, batch, seed)
            mlflow.log_metrics({"real_examples": len(real), "replay_examples": len(replay)})
            if stage_name == "sft":
                T.sft(model, stream, train, **fit)
            else:
                T.distill(model, stream, train, **fit)
        else:
            pairs = _examples(cfg, arch, datasets["preferences"])
            T.dpo(model, batch_stream(lambda: pairs, batch, seed), train, beta=settings["beta"], **fit)
        final = save_checkpoint(workdir / "model.pt", model,
                                extra={"stage": stage_name, "init_sha256": init and init["sha256"]})
        store.put_file(key, final)
        return checkpoint_ref(store, key, final)


@flywheel_task(name="evaluate", version="1")
def evaluate_model(cfg: FlywheelConfig, model: dict, heldout: DatasetRef, seeds: int, label: str = "",
                   parent_run_id: str | None = None) -> dict:
    """Held-out metrics of a checkpoint (see sam3d_model.evaluation); the per-object scores
    are logged as a table artifact."""
    net = load_model(local_checkpoint(cfg, model))
    examples = _examples(cfg, net.cfg, [heldout])
    with stage(cfg, parent_run_id, f"evaluate-{label}" if label else "evaluate",
               params={"model": model["uri"], "seeds": seeds}) as run_id:
        log_datasets(run_id, inputs=[heldout])
        result = evaluate(net, examples, seeds=seeds)
        mlflow.log_metrics({k: v for k, v in result["summary"].items() if v == v})  # NaN is not logged
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "heldout_objects.json"
            path.write_text(json.dumps(result["objects"], indent=1))
            mlflow.log_artifact(str(path), "evaluation")
    return result["summary"]


@flywheel_task(name="register-model", version="2")
def register_model(cfg: FlywheelConfig, checkpoint: dict, name: str, datasets: dict[str, list[DatasetRef]],
                   tags: dict, parent_run_id: str | None = None) -> dict:
    """A registry version for ``checkpoint`` (the existing one if this checkpoint is already
    registered under ``name``), tagged with the round and with the datasets that made it
    (``dataset.<role>`` = ``name@version[,...]``, what ``flywheel lineage`` follows); its run
    logs those datasets as inputs."""
    from mlflow import MlflowClient

    from flywheel import lineage

    lineage.configure(cfg)
    client = MlflowClient()
    found = [v for v in client.search_model_versions(f"name = '{name}'")
             if v.tags.get("checkpoint_sha256") == checkpoint["sha256"]]
    if not found:
        tags = {**{k: str(v) for k, v in tags.items()},
                **{f"dataset.{role}": ",".join(str(r) for r in refs) for role, refs in datasets.items()}}
        with stage(cfg, parent_run_id, "register", params={"checkpoint": checkpoint["uri"]}) as run_id:
            log_datasets(run_id, inputs=[r for refs in datasets.values() for r in refs])
            register_checkpoint(cfg, local_checkpoint(cfg, checkpoint), run_id=run_id, name=name, tags=tags)
        found = [v for v in client.search_model_versions(f"name = '{name}'")
                 if v.tags.get("checkpoint_sha256") == checkpoint["sha256"]]
    version = min(found, key=lambda v: int(v.version)).version
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}", "sha256": checkpoint["sha256"]}


def set_alias(cfg: FlywheelConfig, model: dict, alias: str) -> None:
    from mlflow import MlflowClient

    from flywheel import lineage

    lineage.configure(cfg)
    MlflowClient().set_registered_model_alias(model["name"], alias, model["version"])
