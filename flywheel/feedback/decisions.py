"""Round k's decisions as datasets: accepted winners -> ``sft`` (their layout target: the pose an
annotator aligned the winner to, else the candidate's own), (winner, loser) pairs ->
``preferences`` (DPO), all-rejected objects -> ``hard-cases``. Each is a versioned dataset
that carries the photo and mask of its object and the occupancy of its candidates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from flywheel.core.contracts import HARD_CASES, PREFERENCES, SFT, DatasetSpec
from flywheel.core.datasets import Dataset, DatasetWriter, committed_ref, version_of
from flywheel.core.records import DatasetRef
from flywheel.core.store import Store


@dataclass(frozen=True)
class RoundDecisions:
    """What deciding a round committed, and its decision metrics (accept rate, agreement ...)."""

    metrics: dict[str, float]
    sft: DatasetRef
    preferences: DatasetRef
    hard_cases: DatasetRef

    @property
    def datasets(self) -> list[DatasetRef]:
        return [self.sft, self.preferences, self.hard_cases]


def write_decisions(
    store: Store,
    *,
    accepted: pd.DataFrame,
    preferences: pd.DataFrame,
    hard: pd.DataFrame,
    rankings: DatasetRef,
    candidates: DatasetRef,
    pool: DatasetRef,
    round_index: int,
    inputs: dict[str, Any],
    code_version: str,
    writer_options: dict[str, Any],
) -> dict[str, DatasetRef]:
    """Commit (or find committed) the three decision datasets; dataset name -> reference."""
    cands = Dataset(store, candidates.name, candidates.version)
    rows = cands.manifest().to_pandas().set_index("candidate_id")
    needed = set(accepted["object_id"]) | set(hard["object_id"]) | set(preferences["object_id"])
    images = {s["__key__"]: s for s in Dataset(store, pool.name, pool.version).samples(keys=sorted(needed))}
    wanted = set(accepted["winner"]) | set(preferences["loser"])
    occ = {s["__key__"]: s["occ.npy"] for s in cands.samples(keys=sorted(wanted))}
    refs = {}
    specs: tuple[tuple[DatasetSpec, pd.DataFrame], ...] = (
        (SFT, accepted),
        (PREFERENCES, preferences),
        (HARD_CASES, hard),
    )
    for spec, frame in specs:
        version = version_of(spec, inputs=inputs, code_version=code_version)
        ref = committed_ref(store, spec.name, version)
        if ref is None:
            with DatasetWriter(
                store, spec, version, inputs=inputs, parents=[rankings, candidates, pool], **writer_options
            ) as writer:
                for r in frame.to_dict("records"):
                    image = images[r["object_id"]]
                    files = {"rgb.png": image["rgb.png"], "mask.png": image["mask.png"]}
                    base = {"object_id": r["object_id"], "round": round_index}
                    if spec is SFT:
                        c = rows.loc[r["winner"]]
                        aligned = r.get("aligned_pose")
                        pose: dict[str, Any] = (
                            aligned
                            if isinstance(aligned, dict)
                            else {"R": list(c["R"]), "t": list(c["t"]), "s": float(c["s"])}
                        )
                        writer.add(
                            r["winner"],
                            {
                                **base,
                                "score": r["score"],
                                "candidate_id": r["winner"],
                                "confidence": r["confidence"],
                                "R": list(pose["R"]),
                                "t": list(pose["t"]),
                                "s": float(pose["s"]),
                                "pose_source": "aligned" if isinstance(aligned, dict) else "candidate",
                            },
                            {**files, "occ.npy": occ[r["winner"]]},
                        )
                    elif spec is PREFERENCES:
                        writer.add(
                            f"{r['winner']}-{r['loser']}",
                            {
                                **base,
                                "score": r["score"],
                                "winner": r["winner"],
                                "loser": r["loser"],
                                "times": r["times"],
                            },
                            {**files, "winner.npy": occ[r["winner"]], "loser.npy": occ[r["loser"]]},
                        )
                    else:
                        writer.add(
                            r["object_id"],
                            {
                                **base,
                                "judgements": r["judgements"],
                                "rejects": r["rejects"],
                                "reject_share": r["reject_share"],
                            },
                            files,
                        )
            ref = writer.ref
        refs[spec.name] = ref
    return refs
