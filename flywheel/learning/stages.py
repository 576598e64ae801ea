"""Training stages on the flywheel's stored data.

A stage's output is a checkpoint in the dataset store under ``models/``, named by the
digest of everything that shapes it (:func:`checkpoint_name`: stage, starting checkpoint,
dataset versions, settings, architecture), so a finished stage is never trained twice.
While it trains, its resumable state lives in a work folder: a killed stage resumes at its
last checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.utils.data

from flywheel.core.config import FlywheelConfig, ModelSection
from flywheel.core.datasets import Dataset
from flywheel.core.digests import digest_of, file_digest
from flywheel.core.records import CheckpointRef, DatasetRef
from flywheel.core.store import Store
from flywheel.learning.examples import ExampleStream
from flywheel.tracking.registry import resolve_model
from sam3d_model import train as T
from sam3d_model.data import Source, batch_stream, collate, curriculum_stream
from sam3d_model.dpo import preference_accuracy
from sam3d_model.model import SmallSam3D

#: stage -> the dataset roles it reads (``replay``: synthetic data mixed into SFT / distillation;
#: ``art3do``: artists' meshes of hard cases)
STAGE_INPUTS = {
    "vae": ("iso3do",),
    "encoder": ("iso3do", "occlusions"),
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
    # each worker reads its own part of the data and draws its own noise: other counts, other weights
    if section.train_workers:
        out["train_workers"] = section.train_workers
    if section.loader_workers:
        out["loader_workers"] = section.loader_workers
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
    cache_mb: int = 0,
) -> dict[str, float]:
    """Train ``model`` in place for one stage on ``datasets`` (role -> versions, roles per
    :data:`STAGE_INPUTS`); resumable state in ``workdir``; ``probe``: a learning curve for
    every flow stage; ``after_save``: see :func:`sam3d_model.train.fit`;
    ``cache_mb``: see :class:`ExampleStream`. Returns example counts per role (DPO: and the
    held-out preference accuracy).

    The data streams from the store: under ``torch.distributed`` with W workers each worker
    reads its own part (:class:`ExampleStream`) and trains on ``batch_size / W`` examples a
    step, so that the W workers together take steps of ``batch_size``."""
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
    rank, world = T.distributed()
    batch, seed = _local_batch(settings["batch_size"], world), settings["seed"] + rank
    loader_workers = settings.get("loader_workers", 0)

    def stream(role: str, **kwargs: Any) -> ExampleStream | None:
        """``role``'s examples, or None without any (a round whose objects were all rejected
        has an empty SFT version: its batches are then all replay)."""
        examples = ExampleStream(
            arch, datasets.get(role, []), rank=rank, world=world, cache_bytes=cache_mb * 2**20, **kwargs
        )
        return examples if examples.count() else None

    def source(examples: ExampleStream | None) -> Source | None:
        return None if examples is None else epochs(examples, loader_workers)

    fit: dict[str, Any] = {"checkpoint_dir": workdir, "log_to": log_to, "after_save": after_save}
    if stage not in ("vae", "encoder"):  # before the flow trains, its samples say nothing
        fit["probe"] = probe
    if stage in ("vae", "pretrain", "midtrain"):
        (role,) = STAGE_INPUTS[stage]
        examples = stream(role)
        if examples is None:
            raise ValueError(f"stage {stage}: no {role} dataset to train on")
        {"vae": T.train_vae, "pretrain": T.pretrain, "midtrain": T.midtrain}[stage](
            model, batch_stream(epochs(examples, loader_workers), batch, seed), train, **fit
        )
        return {"examples": examples.count()}
    if stage == "encoder":
        views, composites = stream("iso3do"), stream("occlusions")
        if views is None or composites is None:
            raise ValueError("stage encoder: it needs both an iso3do and an occlusions dataset")
        # every batch mixes the two in proportion to their sizes (one stream would shuffle
        # only within its buffer: whole runs of batches of one kind)
        sizes: dict[str, float] = {"iso3do_examples": views.count(), "occlusions_examples": composites.count()}
        share = sizes["iso3do_examples"] / sum(sizes.values())  # each count() reads manifests: once
        batches = curriculum_stream(source(composites), source(views), [share], train.steps, batch, seed)
        T.pretrain_encoder(model, batches, train, **fit)
        return sizes
    if stage in ("sft", "distill"):
        real, replay, artist = stream("sft"), stream("replay"), stream("art3do")
        batches = curriculum_stream(
            source(real),
            source(replay),
            settings["curriculum"],
            train.steps,
            batch,
            seed,
            source(artist),
            settings.get("art3do_share", 0.0),
        )
        (T.sft if stage == "sft" else T.distill)(model, batches, train, **fit)
        return {
            "real_examples": real.count() if real else 0,
            "replay_examples": replay.count() if replay else 0,
            "art3do_examples": artist.count() if artist else 0,
        }
    share = settings.get("heldout_share", 0.0)
    pairs = stream("preferences", keep=functools.partial(_pair_held_out, share=share, held=False))
    held_stream: ExampleStream | None = ExampleStream(
        arch, datasets["preferences"], keep=functools.partial(_pair_held_out, share=share, held=True)
    )
    if pairs is None:  # too few objects to hold any out
        pairs, held_stream = stream("preferences"), None
    if pairs is None:
        raise ValueError("stage dpo: the preferences datasets hold no pairs")
    reference = T.frozen_copy(model)
    T.dpo(
        model,
        batch_stream(epochs(pairs, loader_workers), batch, seed),
        train,
        beta=settings["beta"],
        sft_weight=settings.get("sft_weight", 0.0),
        reference=reference,
        **fit,
    )
    held = list(held_stream) if held_stream is not None else []
    counts: dict[str, float] = {"pairs": pairs.count(), "heldout_pairs": len(held)}
    if held:  # every worker measures all of them, as one process would
        size = settings["batch_size"]
        held_batches = [collate(held[i : i + size]) for i in range(0, len(held), size)]
        counts["heldout_preference_accuracy"] = preference_accuracy(model, reference, held_batches, settings["seed"])
    return counts


def _local_batch(batch_size: int, world: int) -> int:
    """Each of ``world`` workers' share of a global batch."""
    if batch_size % world:
        raise ValueError(
            f"a batch of {batch_size} cannot be shared evenly by {world} training workers; "
            f"make the stage's batch_size a multiple of model.train_workers"
        )
    return batch_size // world


def epochs(examples: ExampleStream, loader_workers: int) -> Source:
    """One epoch of ``examples`` per call: read in this process, or by ``loader_workers``
    DataLoader processes (each reads and decodes its own part; they live across epochs, and
    the DataLoader takes their examples in turn, so the order is fixed)."""
    if not loader_workers:
        return lambda: examples
    # forkserver, not fork: a forked worker inherits its parent's threads (Prefect, Ray, MLflow)
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=None,
        num_workers=loader_workers,
        persistent_workers=True,
        multiprocessing_context="forkserver",
    )
    return lambda: loader


def _pair_held_out(row: dict, share: float, held: bool) -> bool:
    """Whether a preference pair's row is (``held``) or is not held out (module level: DataLoader
    workers in other processes get it pickled)."""
    return held_out(row["object_id"], share) == held


def held_out(object_id: str, share: float) -> bool:
    """Whether ``object_id``'s pairs are held out (stable as pairs accumulate over rounds)."""
    return int(hashlib.sha256(object_id.encode()).hexdigest()[:8], 16) / 16**8 < share
