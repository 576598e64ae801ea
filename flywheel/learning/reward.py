"""The reward model on the flywheel's data (:mod:`sam3d_model.reward` is the model).

Training pairs: every (winner, loser) pair of the preference datasets so far, weighted by how
often the winner beat the loser, and — where artists delivered a hard case — the artist's
mesh preferred to every candidate annotators rejected for that object. The pairs of a share
of the objects (picked by a digest of the object id, as for DPO) are held out to measure it.
Scoring: every proposal of a proposals dataset against its image-pool photo.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from flywheel.core.codecs import decode_npy
from flywheel.core.datasets import Dataset
from flywheel.learning.examples import examples_with_rows, photo_condition
from flywheel.learning.stages import held_out
from sam3d_model.checkpoint import atomic_save, read_payload
from sam3d_model.data import Example, collate
from sam3d_model.model import SmallSam3D
from sam3d_model.reward import RewardModel, pair_features, pairwise_accuracy, train_reward

REWARD_FORMAT = "sam3d-flywheel-reward/1"


@dataclass
class RewardFit:
    model: RewardModel
    pairs: int
    artist_pairs: int
    heldout_pairs: int
    heldout_accuracy: float  # nan without held-out pairs
    train_accuracy: float


def preference_pairs(backbone: SmallSam3D, datasets: Iterable[Dataset]) -> Iterator[tuple[str, Example]]:
    """(object id, pair example weighted by ``times``) of preference datasets."""
    for dataset in datasets:
        for example, row in examples_with_rows(backbone.cfg, dataset):
            yield row["object_id"], {**example, "weight": torch.tensor(float(row["times"]))}


def artist_pairs(
    backbone: SmallSam3D, art3do: Dataset | None, candidates: Iterable[Dataset]
) -> Iterator[tuple[str, Example]]:
    """(object id, pair example): an artist's mesh of a hard case preferred to each candidate
    proposed for that object (all of which annotators rejected)."""
    if art3do is None or not art3do.ref.num_rows:
        return
    arch = backbone.cfg
    objects = {r["sample_key"]: r["object_id"] for r in art3do.manifest().to_pylist()}
    art = {}
    for sample in art3do.samples():
        art[objects[sample["__key__"]]] = (
            photo_condition(arch, sample),
            torch.from_numpy(decode_npy(sample["occ.npy"]).astype("float32")),
        )
    for dataset in candidates:
        rows = {r["sample_key"]: r["object_id"] for r in dataset.manifest().to_pylist()}
        for sample in dataset.samples(keys=[k for k, o in rows.items() if o in art]):
            oid = rows[sample["__key__"]]
            condition, winner = art[oid]
            loser = torch.from_numpy(decode_npy(sample["occ.npy"]).astype("float32"))
            yield oid, {**condition, "winner": winner, "loser": loser, "weight": torch.tensor(1.0)}


def fit_reward(
    backbone: SmallSam3D,
    preferences: list[tuple[str, Example]],
    artists: list[tuple[str, Example]],
    *,
    heldout_share: float,
    l2: float,
    batch_size: int = 32,
) -> RewardFit:
    """Train a reward model on the pairs of the objects not held out; measure it on the rest."""
    model = RewardModel(backbone)
    pairs = preferences + artists
    train = [e for oid, e in pairs if not held_out(oid, heldout_share)]
    held = [e for oid, e in pairs if held_out(oid, heldout_share)]

    def featurise(examples: list[Example]) -> dict[str, torch.Tensor]:
        return pair_features(
            model, [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
        )

    train_features = featurise(train)
    history = train_reward(model, train_features, l2=l2)
    return RewardFit(
        model=model,
        pairs=len(train),
        artist_pairs=len(artists),
        heldout_pairs=len(held),
        heldout_accuracy=pairwise_accuracy(model, featurise(held)),
        train_accuracy=history[-1]["accuracy"] if history else float("nan"),
    )


def save_reward(path: Path, model: RewardModel, backbone_sha256: str) -> Path:
    """The learned part of a reward model (its backbone is the registered model it names)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    return atomic_save({"format": REWARD_FORMAT, "backbone_sha256": backbone_sha256, "state": state}, path)


def load_reward(path: Path, backbone: SmallSam3D, backbone_sha256: str) -> RewardModel:
    payload = read_payload(path, REWARD_FORMAT)
    if payload["backbone_sha256"] != backbone_sha256:
        raise ValueError(
            f"reward model {path}: trained on backbone {payload['backbone_sha256'][:12]}, not {backbone_sha256[:12]}"
        )
    model = RewardModel(backbone)
    model.load_state_dict({**payload["state"], **{f"backbone.{k}": v for k, v in backbone.state_dict().items()}})
    return model.eval()


def score_proposals(model: RewardModel, proposals: Dataset, pool: Dataset, batch_size: int = 64) -> dict[str, float]:
    """candidate id -> reward of every proposal, each against its object's photo."""
    arch = model.backbone.cfg
    conditions = {s["__key__"]: photo_condition(arch, s) for s in pool.samples()}
    rows = {r["sample_key"]: r for r in proposals.manifest().to_pylist()}
    scores: dict[str, float] = {}
    pending: list[tuple[str, Example]] = []

    def flush() -> None:
        batch = collate([e for _, e in pending])
        values = model.score({k: v for k, v in batch.items() if k != "occupancy"}, batch["occupancy"])
        scores.update({cid: float(v) for (cid, _), v in zip(pending, values)})
        pending.clear()

    for sample in proposals.samples():
        row = rows[sample["__key__"]]
        occupancy = torch.from_numpy(decode_npy(sample["occ.npy"]).astype("float32"))
        pending.append((row["candidate_id"], {**conditions[row["object_id"]], "occupancy": occupancy}))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return scores
