"""Proposals on Ray: actors that load the ensemble's models once and serve batches.

Each actor asks for a GPU share when the cluster has GPUs (``num_gpus``, fractional
allowed) and a fractional CPU otherwise (a whole CPU per actor starves Ray on 2-core
machines). A dead actor is replaced by a fresh one and its batch retried once; a batch
that still fails comes back with its reason, for the caller to quarantine.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from flywheel.core.codecs import encode_npy
from flywheel.core.datasets import Dataset
from flywheel.core.raypool import cluster_gpus, ensure_ray, run_on_actors
from flywheel.core.records import Rejected, Sample
from sam3d_model.config import ModelConfig
from sam3d_model.data import collate, condition_inputs
from sam3d_model.ensemble import Candidate, Member


@dataclass(frozen=True)
class ProposalJob:
    id: str
    object_ids: list[str]
    batch: dict[str, torch.Tensor]  # condition batch, one row per object


@dataclass
class ProposalResult:
    id: str
    ok: bool
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    reason: str = ""
    actor_pid: int | None = None


def _actor_class():
    import ray

    @ray.remote(max_restarts=0)
    class ProposalActor:
        def __init__(
            self,
            checkpoints: dict[str, tuple[str, str]],
            members: tuple[Member, ...],
            num_candidates: int,
            library: tuple[list[str], np.ndarray] | None,
            use_gpu: bool,
        ):
            import os

            from sam3d_model.checkpoint import load_model
            from sam3d_model.ensemble import MeshIndex

            torch.set_num_threads(1)
            device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
            self.models = {key: (load_model(path, device), label) for key, (path, label) in checkpoints.items()}
            self.members, self.num_candidates, self.pid = members, num_candidates, os.getpid()
            self.index: dict[str, MeshIndex] = {}
            for m in members:
                if m.kind == "retrieval" and library is not None and m.model not in self.index:
                    self.index[m.model] = MeshIndex(self.models[m.model][0], library[0], library[1])

        def propose(self, job: ProposalJob) -> ProposalResult:
            from sam3d_model.ensemble import propose

            model = next(iter(self.models.values()))[0]
            batch = {k: v.to(model.device) for k, v in job.batch.items()}
            try:
                out = propose(
                    self.models,
                    self.members,
                    job.object_ids,
                    batch,
                    num_candidates=self.num_candidates,
                    index=self.index,
                )
            except (ValueError, RuntimeError) as e:
                return ProposalResult(job.id, False, reason=f"{type(e).__name__}: {e}", actor_pid=self.pid)
            return ProposalResult(job.id, True, out, actor_pid=self.pid)

        def getpid(self) -> int:
            return self.pid

    return ProposalActor


class ProposalPool:
    """``actors`` proposal actors, created once and reused until :meth:`close`.

    ``checkpoints`` maps each model key the members use to (local checkpoint path, version
    label); ``library`` is (mesh ids, occupancy (M, R, R, R)) for retrieval members."""

    def __init__(
        self,
        checkpoints: dict[str, tuple[str, str]],
        members: tuple[Member, ...],
        *,
        num_candidates: int = 8,
        library: tuple[list[str], np.ndarray] | None = None,
        actors: int = 2,
        num_cpus: float = 0.5,
        num_gpus: float = 0.5,
        address: str | None = None,
    ):
        import ray

        ensure_ray(address)
        self.use_gpu = cluster_gpus() > 0 and num_gpus > 0
        self._cls = _actor_class().options(num_cpus=num_cpus, num_gpus=num_gpus if self.use_gpu else 0)
        self._args = (checkpoints, tuple(members), num_candidates, ray.put(library) if library else None, self.use_gpu)
        self.actors = [self._new() for _ in range(actors)]

    def _new(self):
        return self._cls.remote(*self._args)

    def run(self, jobs: list[ProposalJob], on_result=None) -> list[ProposalResult]:
        def replace(dead):
            import ray

            ray.kill(dead)
            return self._new()

        return run_on_actors(
            self.actors,
            jobs,
            lambda actor, job: actor.propose.remote(job),
            name=lambda job: job.id,
            what="proposed batches",
            replace=replace,
            failed=lambda job, reason: ProposalResult(job.id, False, reason=f"proposal {reason}"),
            on_result=on_result,
        )

    def actor_pids(self) -> list[int]:
        import ray

        return ray.get([a.getpid.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> ProposalPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def proposal_items(
    pool: Dataset,
    object_ids: list[str],
    model_cfg: ModelConfig,
    *,
    job_prefix: str,
    objects_per_job: int,
    run: Callable[[list[ProposalJob]], list[ProposalResult]],
) -> Iterator[Sample | Rejected]:
    """The candidates of ``object_ids`` (image-pool objects) as samples of a candidates part:
    each object's condition tensors, batched into jobs for ``run`` (the proposal actors).
    An object that is missing, whose condition cannot be made, or whose job failed is a
    rejection. Items come in job order, whichever actor finished first."""
    examples, seen = {}, set()
    for s in pool.samples(keys=object_ids):
        seen.add(s["__key__"])
        rgb = np.asarray(Image.open(io.BytesIO(s["rgb.png"])).convert("RGB"))
        mask = np.asarray(Image.open(io.BytesIO(s["mask.png"]))) > 127
        try:
            crop, full = condition_inputs(model_cfg, rgb, mask, name=s["__key__"])
        except ValueError as e:
            yield Rejected(s["__key__"], "bad condition", str(e), kind="object")
            continue
        examples[s["__key__"]] = {"crop": crop, "full": full, "full_valid": torch.tensor(True)}
    for o in object_ids:
        if o not in seen:
            yield Rejected(o, "missing object", f"{o} is not in {pool.ref}", kind="object")
    ready = [o for o in object_ids if o in examples]
    groups = [ready[i : i + objects_per_job] for i in range(0, len(ready), objects_per_job)]
    jobs = [ProposalJob(f"{job_prefix}-{i}", ids, collate([examples[o] for o in ids])) for i, ids in enumerate(groups)]
    results = {r.id: r for r in run(jobs)}
    for job in jobs:
        result = results[job.id]
        for oid in job.object_ids:
            if not result.ok:
                yield Rejected(oid, "proposal failed", f"{oid}: {result.reason}", kind="object")
                continue
            for cand in result.candidates[oid]:
                yield Sample(cand.candidate_id, cand.row(), {"occ.npy": encode_npy(cand.occupancy)})
