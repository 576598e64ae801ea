"""Training stages on the flywheel's stored data.

A stage's output is a checkpoint in the dataset store under ``models/``, named by the
digest of everything that shapes it (:func:`checkpoint_name`: stage, starting checkpoint,
dataset versions, settings, architecture), so a finished stage is never trained twice.
While it trains, its resumable state lives in a work folder: a killed stage resumes at its
last checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel.core.config import FlywheelConfig, ModelSection
from flywheel.core.datasets import Dataset
from flywheel.core.digests import digest_of, file_digest
from flywheel.core.records import CheckpointRef, DatasetRef
from flywheel.core.store import Store
from flywheel.learning.examples import cached_examples, examples_with_rows
from flywheel.tracking.registry import resolve_model
from sam3d_model import train as T
from sam3d_model.config import ModelConfig
from sam3d_model.data import Example, batch_stream, collate, curriculum_stream
from sam3d_model.dpo import preference_accuracy
from sam3d_model.model import SmallSam3D

#: stage -> the dataset roles it reads (``replay``: synthetic data mixed into SFT / distillation;
#: ``art3do``: artists' meshes of hard cases)
STAGE_INPUTS = {
    "vae": ("iso3do",),
    "pretrain": ("iso3do",),
    "midtrain": ("occlusions",),
    "sft": ("sft", "replay", "art3do"),
    "dpo": ("preferences",),
    "distill": ("sft", "replay", "art3do"),
}


def stage_settings(section: ModelSection, stage: str) -> dict[str, Any]:
    """The settings of ``stage`` that shape its checkpoint (so they are in its name)."""
    s = getattr(section, stage)
    out: dict[str, Any] = {
        "steps": s.steps,
        "lr": s.lr,
        "batch_size": s.batch_size,
        "seed": section.seed,
        "device": section.device,
    }
    if stage in ("sft", "distill"):
        out["curriculum"] = list(section.curriculum)
        out["art3do_share"] = section.art3do_share
    if section.train_workers:  # each worker draws its own noise: another worker count, other weights
        out["train_workers"] = section.train_workers
    if stage == "dpo":
        out["beta"] = section.dpo_beta
        out["sft_weight"] = section.dpo_sft_weight
        out["heldout_share"] = section.dpo_heldout_share
    return out


def checkpoint_name(
    stage: str,
    init: CheckpointRef | None,
    datasets: dict[str, list[DatasetRef]],
    settings: dict[str, Any],
    architecture: dict[str, Any],
) -> str:
    unknown = set(datasets) - set(STAGE_INPUTS[stage])
    if unknown:
        raise ValueError(f"stage {stage}: unexpected dataset roles {sorted(unknown)}")
    # "seeded": new models are initialised from settings.seed (before: from torch's global state)
    return (
        f"{stage}-"
        + digest_of(
            {
                "stage": stage,
                "init": init.sha256 if init else "seeded",
                "datasets": {k: [r.version for r in v] for k, v in datasets.items()},
                "settings": settings,
                "architecture": architecture,
            }
        )[:24]
    )


def checkpoint_ref(store: Store, key: str, local: Path | None = None) -> CheckpointRef:
    """The reference of a checkpoint in the store (``local``: a copy to hash instead)."""
    local = local or store.local_path(key)
    sha = file_digest(local) if local is not None else hashlib.sha256(store.get_bytes(key)).hexdigest()
    return CheckpointRef(uri=store.uri(key), key=key, sha256=sha)


def local_checkpoint(cfg: FlywheelConfig, store: Store, ref: CheckpointRef) -> Path:
    """A local file for a checkpoint reference (a store checkpoint or a registry model), its
    sha256 checked against the reference."""
    if ref.uri.startswith("models:/"):
        return resolve_model(cfg, ref.uri).path
    assert ref.key is not None, f"checkpoint {ref.uri}: a store checkpoint needs its key"
    local = store.local_path(ref.key)
    if local is None:
        local = cfg.state_dir / "models" / f"{ref.sha256}.pt"
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_suffix(".tmp")
            tmp.write_bytes(store.get_bytes(ref.key))
            tmp.replace(local)
    if file_digest(local) != ref.sha256:
        raise ValueError(f"checkpoint {ref.uri}: sha256 differs from the reference {ref.sha256[:12]}")
    return local


def run_stage(
    stage: str,
    model: SmallSam3D,
    datasets: dict[str, list[Dataset]],
    settings: dict[str, Any],
    workdir: Path,
    log_to: T.TrainLog | None = None,
    probe: T.Probe | None = None,
    after_save: Callable[[int, Path], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for one stage on ``datasets`` (role -> versions, roles per
    :data:`STAGE_INPUTS`); resumable state in ``workdir``; ``probe``: a learning curve for
    every stage after the VAE; ``after_save``: see :func:`sam3d_model.train.fit`. Returns
    example counts per role (DPO: and the held-out preference accuracy)."""
    arch = model.cfg
    train = T.TrainSettings(
        steps=settings["steps"],
        lr=settings["lr"],
        seed=settings["seed"],
        device=settings["device"],
        log_every=max(1, settings["steps"] // 20),
        checkpoint_every=max(10, settings["steps"] // 5),
        warmup_steps=10,
    )
    batch, seed = settings["batch_size"], settings["seed"]
    fit: dict[str, Any] = {"checkpoint_dir": workdir, "log_to": log_to, "after_save": after_save}
    if stage != "vae":
        fit["probe"] = probe
    if stage in ("vae", "pretrain", "midtrain"):
        examples = cached_examples(arch, next(iter(datasets.values())))
        {"vae": T.train_vae, "pretrain": T.pretrain, "midtrain": T.midtrain}[stage](
            model, batch_stream(lambda: examples, batch, seed), train, **fit
        )
        return {"examples": len(examples)}
    if stage in ("sft", "distill"):
        real = cached_examples(arch, datasets.get("sft", []))
        replay = cached_examples(arch, datasets.get("replay", []))
        artist = cached_examples(arch, datasets.get("art3do", []))
        stream = curriculum_stream(
            real, replay, settings["curriculum"], train.steps, batch, seed, artist, settings.get("art3do_share", 0.0)
        )
        (T.sft if stage == "sft" else T.distill)(model, stream, train, **fit)
        return {"real_examples": len(real), "replay_examples": len(replay), "art3do_examples": len(artist)}
    pairs, held = preference_split(arch, datasets["preferences"], settings.get("heldout_share", 0.0))
    if not pairs:  # too few objects to hold any out
        pairs, held = held, []
    reference = T.frozen_copy(model)
    T.dpo(
        model,
        batch_stream(lambda: pairs, batch, seed),
        train,
        beta=settings["beta"],
        sft_weight=settings.get("sft_weight", 0.0),
        reference=reference,
        **fit,
    )
    counts: dict[str, float] = {"pairs": len(pairs), "heldout_pairs": len(held)}
    if held:
        batches = [collate(held[i : i + batch]) for i in range(0, len(held), batch)]
        counts["heldout_preference_accuracy"] = preference_accuracy(model, reference, batches, seed)
    return counts


def preference_split(arch: ModelConfig, datasets: list[Dataset], share: float) -> tuple[list[Example], list[Example]]:
    """(training pairs, held-out pairs): the pairs of ``share`` of the objects, picked by a
    digest of the object id (stable as pairs accumulate), are held out."""
    train: list[Example] = []
    held: list[Example] = []
    for dataset in datasets:
        for example, row in examples_with_rows(arch, dataset):
            (held if held_out(row["object_id"], share) else train).append(example)
    return train, held


def held_out(object_id: str, share: float) -> bool:
    """Whether ``object_id``'s pairs are held out (stable as pairs accumulate over rounds)."""
    return int(hashlib.sha256(object_id.encode()).hexdigest()[:8], 16) / 16**8 < share
