"""Best-of-N proposals from an ensemble: model members at several seeds and guidance
scales, and retrieval of the nearest meshes of the library.

Retrieval embeds shapes with the member model's own shape VAE (the posterior mean of the
occupancy, flattened) and queries with the model's first sample for the object: the
library is searched in the space the model generates in, so a retrieved mesh is "the
library shape closest to what the model believes", at no extra training cost. The
retrieved candidate keeps the query sample's layout.

Candidates are identified by content: a candidate id is the digest of the object, the
occupancy bytes and the rounded pose, so the same proposal gets the same id in any run,
and duplicates (which annotators cannot tell apart) are dropped before counting N.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from sam3d_model.model import SmallSam3D


class Member(BaseModel):
    """One ensemble member; its name is written into every candidate it proposes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Literal["model", "retrieval"] = "model"
    model: str = Field("champion", description="key into the ensemble's models (a model reference)")
    seeds: tuple[int, ...] = (0,)
    guidance: float | None = Field(None, description="CFG strength (default: the model's)")
    steps: int | None = None
    shortcut: bool = False
    top_k: int = Field(2, ge=1, description="retrieval: meshes per object")


DEFAULT_MEMBERS: tuple[Member, ...] = (
    Member(name="champion", seeds=(0, 1, 2)),
    Member(name="champion-strong-cfg", seeds=(4, 5), guidance=3.0),
    Member(name="earlier-champion", model="earlier-champion", seeds=(0,)),  # the champion it replaced, if any
    Member(name="retrieval", kind="retrieval", top_k=2),
)


def oversampled(members: tuple[Member, ...], factor: int) -> tuple[Member, ...]:
    """The members proposing ``factor`` times as many candidates: a model member at its seeds
    and ``factor - 1`` further seeds per seed (s + 1000 j), a retrieval member returning
    ``factor`` times as many meshes. The first N a member proposes are unchanged."""
    if factor == 1:
        return members
    out = []
    for m in members:
        if m.kind == "model":
            seeds = m.seeds + tuple(s + 1000 * j for j in range(1, factor) for s in m.seeds)
            out.append(m.model_copy(update={"seeds": seeds}))
        else:
            out.append(m.model_copy(update={"top_k": m.top_k * factor}))
    return tuple(out)


@dataclass
class Candidate:
    object_id: str
    member: str
    kind: str
    model_version: str
    seed: int
    guidance: float
    steps: int
    occupancy: np.ndarray  # bool (R, R, R)
    R: np.ndarray
    t: np.ndarray
    s: float
    retrieved_mesh_id: str = ""
    candidate_id: str = field(init=False)

    def __post_init__(self):
        h = hashlib.sha256(self.object_id.encode())
        h.update(np.packbits(self.occupancy.astype(bool)).tobytes())
        h.update(np.round(np.r_[self.R.ravel(), self.t, self.s], 3).astype(np.float32).tobytes())
        self.candidate_id = "cand-" + h.hexdigest()[:20]

    def row(self) -> dict:
        return {
            "candidate_id": self.candidate_id,
            "object_id": self.object_id,
            "member": self.member,
            "kind": self.kind,
            "model_version": self.model_version,
            "seed": self.seed,
            "guidance": float(self.guidance),
            "steps": self.steps,
            "retrieved_mesh_id": self.retrieved_mesh_id,
            "R": self.R.ravel().tolist(),
            "t": self.t.tolist(),
            "s": float(self.s),
            "occupied_fraction": float(self.occupancy.mean()),
        }


class MeshIndex:
    """Library shapes embedded by one model's shape VAE, for nearest-neighbour retrieval."""

    def __init__(self, model: SmallSam3D, mesh_ids: list[str], occupancy: np.ndarray, batch: int = 64):
        self.mesh_ids = list(mesh_ids)
        self.occupancy = occupancy.astype(bool)
        with torch.no_grad():
            emb = [
                model.encode_shape(torch.from_numpy(occupancy[i : i + batch]).float().to(model.device)).flatten(1)
                for i in range(0, len(occupancy), batch)
            ]
        self.embedding = torch.nn.functional.normalize(torch.cat(emb), dim=1) if emb else torch.zeros(0)

    def nearest(self, queries: torch.Tensor, k: int) -> list[list[int]]:
        """(B, N, C) query latents -> indices of the k most similar library shapes (cosine)."""
        if len(self.mesh_ids) == 0:
            return [[] for _ in range(queries.shape[0])]
        q = torch.nn.functional.normalize(queries.flatten(1), dim=1)
        sims = q @ self.embedding.to(q.device).T
        return sims.topk(min(k, len(self.mesh_ids)), dim=1).indices.tolist()


def propose(
    models: dict[str, tuple[SmallSam3D, str]],
    members: tuple[Member, ...],
    object_ids: list[str],
    batch: dict[str, torch.Tensor],
    *,
    num_candidates: int,
    index: dict[str, MeshIndex] | None = None,
    extra_seeds: int = 8,
) -> dict[str, list[Candidate]]:
    """Up to ``num_candidates`` distinct candidates per object of a condition batch.

    ``models`` maps a member's ``model`` key to (model, version label). Members run in
    order; if duplicates leave an object short, the first model member is sampled at
    further seeds (up to ``extra_seeds``)."""
    out: dict[str, list[Candidate]] = {o: [] for o in object_ids}
    seen: dict[str, set[str]] = {o: set() for o in object_ids}

    def add(c: Candidate) -> None:
        if c.candidate_id not in seen[c.object_id] and len(out[c.object_id]) < num_candidates:
            seen[c.object_id].add(c.candidate_id)
            out[c.object_id].append(c)

    def sample(member: Member, seed: int):
        model, label = models[member.model]
        guidance = model.cfg.guidance if member.guidance is None else member.guidance
        steps = member.steps or (model.cfg.shortcut_steps if member.shortcut else model.cfg.sample_steps)
        pred = model.sample(batch, steps=steps, guidance=guidance, shortcut=member.shortcut, seed=seed)
        return pred, label, (0.0 if member.shortcut else guidance), steps

    def add_samples(member: Member, seed: int) -> None:
        pred, label, guidance, steps = sample(member, seed)
        for i, oid in enumerate(object_ids):
            item = pred.item(i)
            add(
                Candidate(
                    oid,
                    member.name,
                    "model",
                    label,
                    seed,
                    guidance,
                    steps,
                    item["occupancy"],
                    item["rotation"],
                    item["translation"],
                    item["scale"],
                )
            )

    for member in members:
        if member.kind == "model":
            for seed in member.seeds:
                add_samples(member, seed)
        else:
            model, label = models[member.model]
            pred, _, _, _ = sample(member, member.seeds[0])
            with torch.no_grad():
                query = model.encode_shape((pred.occupancy > 0.5).float())
            lib = (index or {}).get(member.model)
            if lib is None:
                raise ValueError(f"member {member.name}: retrieval needs a mesh index for model {member.model!r}")
            for i, (oid, hits) in enumerate(zip(object_ids, lib.nearest(query, member.top_k))):
                item = pred.item(i)
                for h in hits:
                    add(
                        Candidate(
                            oid,
                            member.name,
                            "retrieval",
                            label,
                            -1,
                            0.0,
                            0,
                            lib.occupancy[h],
                            item["rotation"],
                            item["translation"],
                            item["scale"],
                            lib.mesh_ids[h],
                        )
                    )
    first = next((m for m in members if m.kind == "model"), None)
    for extra in range(extra_seeds):
        if first is None or all(len(c) >= num_candidates for c in out.values()):
            break
        add_samples(first, 10_000 + extra)
    return out
