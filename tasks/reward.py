"""Tasks of reward-model-guided best-of-N: train the round's reward model on every preference
so far (:mod:`flywheel.learning.reward`), and select the candidates annotators see from the
ensemble's proposals (:mod:`flywheel.feedback.search`)."""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from flywheel.core.config import FlywheelConfig
from flywheel.core.contracts import CANDIDATES
from flywheel.core.datasets import Dataset, DatasetWriter, committed_ref, version_of
from flywheel.core.digests import digest_of
from flywheel.core.records import DatasetRef, ModelRef, RewardRef
from flywheel.feedback.search import shortlist
from flywheel.learning.reward import (
    artist_pairs,
    fit_reward,
    load_reward,
    preference_pairs,
    save_reward,
    score_proposals,
)
from flywheel.learning.stages import checkpoint_ref, local_checkpoint
from flywheel.tracking.registry import resolve_model
from sam3d_model.checkpoint import load_model
from tasks.conventions import flywheel_task, log_datasets, short, stage, store_for, writer_options

log = logging.getLogger(__name__)


@flywheel_task(
    name="reward-model",
    version="1",
    run_name=lambda p: f"reward-model-from-{p['champion'].name}-v{p['champion'].version}",
)
def train_reward_model(
    cfg: FlywheelConfig,
    champion: ModelRef,
    preferences: list[DatasetRef],
    art3do: DatasetRef | None,
    candidates: list[DatasetRef],
    settings: dict[str, Any],
    parent_run_id: str | None = None,
) -> RewardRef | None:
    """A reward model over ``champion``'s features, trained on the ``preferences`` pairs and
    on artists' meshes (``art3do``) preferred to the ``candidates`` proposed for their objects;
    the pairs of ``settings["heldout_share"]`` of the objects measure it. None (logged) when
    fewer than ``settings["min_pairs"]`` pairs train it."""
    store = store_for(cfg)
    inputs = [*preferences, *([art3do] if art3do else []), *candidates]
    with stage(cfg, parent_run_id, "reward-model", params={**settings, "backbone": champion.uri}) as run_id:
        log_datasets(run_id, inputs=inputs)
        backbone = load_model(resolve_model(cfg, champion.uri).path)
        fit = fit_reward(
            backbone,
            list(preference_pairs(backbone, (Dataset(store, r.name, r.version) for r in preferences))),
            list(
                artist_pairs(
                    backbone,
                    Dataset(store, art3do.name, art3do.version) if art3do else None,
                    (Dataset(store, r.name, r.version) for r in candidates),
                )
            ),
            heldout_share=settings["heldout_share"],
            l2=settings["l2"],
        )
        metrics = {
            "pairs": fit.pairs,
            "artist_pairs": fit.artist_pairs,
            "heldout_pairs": fit.heldout_pairs,
            "heldout_accuracy": fit.heldout_accuracy,
            "train_accuracy": fit.train_accuracy,
        }
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        log.info("reward model: %s", metrics)
        if fit.pairs < settings["min_pairs"]:
            log.info(
                "reward model: %d training pairs < reward.min_pairs %d; none this round",
                fit.pairs,
                settings["min_pairs"],
            )
            return None
        name = "reward-" + digest_of({"backbone": champion.sha256, "inputs": [r.version for r in inputs], **settings})
        key = f"models/{name[:31]}.pt"
        with tempfile.TemporaryDirectory() as tmp:
            local = save_reward(Path(tmp) / "reward.pt", fit.model, champion.sha256)
            store.put_file(key, local)
            checkpoint = checkpoint_ref(store, key, local)
        mlflow.set_tag("checkpoint", checkpoint.uri)
        return RewardRef(
            checkpoint=checkpoint,
            backbone=champion.uri,
            pairs=fit.pairs,
            heldout_pairs=fit.heldout_pairs,
            heldout_accuracy=fit.heldout_accuracy,
            artist_pairs=fit.artist_pairs,
        )


@flywheel_task(name="candidates", version="3", run_name=lambda p: f"select-candidates-{short(p['proposals'])}")
def select_candidates(
    cfg: FlywheelConfig,
    proposals: DatasetRef,
    pool: DatasetRef,
    reward: RewardRef | None,
    num_candidates: int,
    explore: int,
    parent_run_id: str | None = None,
) -> DatasetRef:
    """Commit the candidates annotators see (the candidate registry): per object the reward
    model's top ``num_candidates`` − ``explore`` proposals and ``explore`` drawn at random from
    the rest; without a reward model, every proposal. The proposals' quarantine rows (objects
    or members that proposed nothing) are carried over."""
    store = store_for(cfg)
    settings = {"num_candidates": num_candidates, "explore": explore}
    inputs = {
        "proposals": proposals,
        "reward": reward.checkpoint.sha256 if reward else None,
        "settings": settings,
    }
    version = version_of(CANDIDATES, inputs=inputs, code_version=select_candidates.version)
    source = Dataset(store, proposals.name, proposals.version)
    parents = [
        proposals,
        *(Dataset(store, p["name"], p["version"]).ref for p in source.marker["parents"]),
    ]  # the image pool and retrieval libraries stay direct parents: checks and lineage follow them
    params = {**settings, "reward": reward.checkpoint.uri if reward else "none"}
    with stage(cfg, parent_run_id, "candidates", params=params) as run_id:
        ref = committed_ref(store, CANDIDATES.name, version)
        if ref is None:
            rows = source.manifest().to_pylist()
            proposed: dict[str, list[str]] = defaultdict(list)
            for row in rows:
                proposed[row["object_id"]].append(row["candidate_id"])
            scores = None
            if reward is not None:
                backbone = resolve_model(cfg, reward.backbone)
                model = load_reward(
                    local_checkpoint(cfg, store, reward.checkpoint), load_model(backbone.path), backbone.sha256
                )
                scores = score_proposals(model, source, Dataset(store, pool.name, pool.version))
            shown = {c for ids in shortlist(proposed, scores, num_candidates, explore, seed=0).values() for c in ids}
            by_key = {r["sample_key"]: r for r in rows}
            columns = CANDIDATES.schema.names
            with DatasetWriter(
                store, CANDIDATES, version, inputs=inputs, parents=parents, **writer_options(cfg)
            ) as writer:
                for sample in source.samples():
                    row = by_key[sample["__key__"]]
                    if row["candidate_id"] in shown:
                        writer.add(sample["__key__"], {c: row[c] for c in columns}, {"occ.npy": sample["occ.npy"]})
                for q in source.quarantine().to_pylist():
                    writer.quarantine(q["item_id"], q["kind"], q["reason"], q["detail"])
            ref = writer.ref
            if scores is not None:
                picked = [v for c, v in scores.items() if c in shown]
                passed = [v for c, v in scores.items() if c not in shown]
                mlflow.log_metrics(
                    {"reward_shown": float(np.mean(picked)), "reward_not_shown": float(np.mean(passed or [np.nan]))}
                )
        mlflow.log_metrics({"proposals": proposals.num_rows, "candidates": ref.num_rows})
        log_datasets(run_id, inputs=parents, outputs=[ref])
    return ref
