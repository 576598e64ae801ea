"""Simulated annotators, for unattended rounds, tests and the demo.

On objects whose ground truth is known (Flying-Occlusions composites in the image pool),
an annotator judges candidates by their true quality — voxel IoU with the true shape,
minus a penalty per degree of rotation error and per unit of translation error — seen
through its own imperfections: Gaussian noise on the quality, a bias for or against some
ensemble members, a probability of flipping a pairwise answer, and an absolute quality
bar under which it rejects all candidates; some align their best-of-N winner's pose to the
photo (the paper's stage 3), within a noise of their own. Objects are dealt out in turn so
that each is judged by ``per_object`` annotators (the overlap agreement is measured on).
They write the same native and Label Studio exports that people do, which go through the
same ingestion.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from flywheel.core.codecs import decode_npy
from flywheel.core.config import AnnotatorSettings
from flywheel.core.datasets import Dataset


@dataclass(frozen=True)
class SimulatedAnnotator:
    name: str
    noise: float = 0.0  # std of the noise on each candidate's quality
    flip_probability: float = 0.0  # chance a pairwise answer is flipped
    bias: dict = field(default_factory=dict)  # member name -> quality bonus
    reject_threshold: float = float("-inf")  # its pick, looked at again, perceived below this: reject all
    pairs_per_object: int = 0  # 0: one best-of-N judgement; k: k pairwise judgements
    rotation_weight: float = 1 / 180  # quality lost per degree of rotation error
    translation_weight: float = 0.5  # quality lost per unit of translation error
    align_noise_deg: float | None = None  # aligns its best-of-N winner to the truth within this (None: never)

    @classmethod
    def from_settings(cls, settings: AnnotatorSettings) -> SimulatedAnnotator:
        """The annotator a config entry (``rounds.annotators``) describes."""
        fields = settings.model_dump(exclude={"reject_threshold"})
        threshold = float("-inf") if settings.reject_threshold is None else settings.reject_threshold
        return cls(**fields, reject_threshold=threshold)


@dataclass(frozen=True)
class Truth:
    occupancy: np.ndarray
    R: np.ndarray
    t: np.ndarray
    s: float = 1.0


def aligned_pose(truth: Truth, noise_deg: float, rng: np.random.Generator) -> dict:
    """What an annotator's layout alignment gives: the true pose, off by a rotation about a
    random axis of ~N(0, ``noise_deg``) degrees, the translation by ~N(0, 0.02 · noise_deg)
    per axis (5°: 0.1, objects stand 2.5–4 away) and the scale by ~N(0, 0.01 · noise_deg)
    relative."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.normal(0, noise_deg))
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    turn = np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K
    t = np.asarray(truth.t, float) + rng.normal(0, 0.02 * noise_deg, 3)
    t[2] = max(t[2], 1e-3)
    s = truth.s * float(np.exp(rng.normal(0, 0.01 * noise_deg)))
    return {"R": (turn @ truth.R).reshape(-1).tolist(), "t": t.tolist(), "s": s}


def quality(
    candidate_occ: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    truth: Truth,
    rotation_weight: float = 1 / 180,
    translation_weight: float = 0.5,
) -> float:
    """vIoU with the true shape minus layout penalties (1 for a perfect candidate)."""
    a, b = candidate_occ.astype(bool), truth.occupancy.astype(bool)
    union = np.logical_or(a, b).sum()
    viou = 1.0 if union == 0 else np.logical_and(a, b).sum() / union
    cos = np.clip((np.trace(np.asarray(R).T @ truth.R) - 1) / 2, -1, 1)
    return float(
        viou
        - rotation_weight * np.degrees(np.arccos(cos))
        - translation_weight * np.linalg.norm(np.asarray(t) - truth.t)
    )


def best_of_n(candidates: dict[str, list[dict]], truths: dict[str, Truth], acceptable: float = 0.6) -> dict[str, float]:
    """How good a round's candidates are, by vIoU with the true shape, over the objects whose
    truth is known: ``oracle_viou`` — the mean of each object's best candidate (the most that
    annotators picking the best can reach); ``yield`` — the share of objects with a candidate
    of vIoU >= ``acceptable`` (one annotators could accept); ``model_viou`` /
    ``retrieval_viou`` — each object's mean candidate of each kind, averaged over objects (a
    model's typical sample, a retrieved mesh; objects weigh equally, as in ``oracle_viou``,
    so that neither exceeds it however many candidates of a kind an object has); ``objects``."""
    best: list[float] = []
    by_kind: dict[str, list[float]] = {"model": [], "retrieval": []}
    for oid in sorted(set(candidates) & set(truths)):
        scores = [quality(c["occupancy"], c["R"], c["t"], truths[oid], 0.0, 0.0) for c in candidates[oid]]
        best.append(max(scores))
        for kind in sorted({c["kind"] for c in candidates[oid]}):
            mine = [q for c, q in zip(candidates[oid], scores) if c["kind"] == kind]
            by_kind.setdefault(kind, []).append(float(np.mean(mine)))
    out = {
        "objects": float(len(best)),
        "oracle_viou": float(np.mean(best)) if best else float("nan"),
        "yield": float(np.mean(np.array(best) >= acceptable)) if best else float("nan"),
    }
    out.update({f"{kind}_viou": float(np.mean(q)) if q else float("nan") for kind, q in by_kind.items()})
    return out


def simulate(
    annotators: list[SimulatedAnnotator],
    candidates: dict[str, list[dict]],
    truths: dict[str, Truth],
    *,
    per_object: int = 2,
    seed: int = 0,
    start: datetime | None = None,
) -> list[dict]:
    """Native judgement rows. ``candidates``: object id -> [{candidate_id, member, occupancy,
    R, t}]; objects without a truth are skipped."""
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    objects = sorted(o for o in candidates if o in truths)
    # objects are dealt out in turn (from a seeded start), as a team lead would: every annotator
    # gets an equal share, and every pair of annotators shares objects to agree on
    first = int(rng.integers(len(annotators)))
    per_object = min(per_object, len(annotators))
    for n, oid in enumerate(objects):
        cands = candidates[oid]
        chosen = [(first + n + j) % len(annotators) for j in range(per_object)]
        for a_index in sorted(chosen):
            ann = annotators[a_index]
            true_q = np.array(
                [
                    quality(c["occupancy"], c["R"], c["t"], truths[oid], ann.rotation_weight, ann.translation_weight)
                    for c in cands
                ]
            )
            bias = np.array([ann.bias.get(c["member"], 0.0) for c in cands])
            seen = true_q + bias + (rng.normal(0, ann.noise, len(cands)) if ann.noise else 0.0)
            base = {
                "annotator_id": ann.name,
                "object_id": oid,
                "timestamp": (start + timedelta(minutes=n)).isoformat(),
                "time_spent_s": float(np.round(rng.uniform(5, 60), 1)),
            }
            sid = f"sim-{ann.name}-{oid}"
            ids = [c["candidate_id"] for c in cands]
            # whether to accept, a second look at the one it would pick: judging acceptability by
            # the best of N noisy looks would overrate every object (the winner's curse)
            pick = int(np.argmax(seen))
            second_look = true_q[pick] + bias[pick] + (rng.normal(0, ann.noise) if ann.noise else 0.0)
            if second_look < ann.reject_threshold:
                rows.append({**base, "submission_id": sid, "kind": "reject-all", "winner": None, "losers": ids})
                continue
            if ann.pairs_per_object == 0:
                order = np.argsort(-seen, kind="stable")
                row = {
                    **base,
                    "submission_id": sid,
                    "kind": "best-of-n",
                    "winner": ids[order[0]],
                    "losers": [ids[i] for i in order[1:]],
                }
                if ann.align_noise_deg is not None:
                    row["aligned_pose"] = aligned_pose(truths[oid], ann.align_noise_deg, rng)
                rows.append(row)
                continue
            pairs = list(itertools.combinations(range(len(cands)), 2))
            picked = rng.choice(len(pairs), size=min(ann.pairs_per_object, len(pairs)), replace=False)
            for k in sorted(picked):
                i, j = pairs[k]
                win, lose = (i, j) if seen[i] >= seen[j] else (j, i)
                if rng.random() < ann.flip_probability:
                    win, lose = lose, win
                rows.append(
                    {
                        **base,
                        "submission_id": f"{sid}-{k}",
                        "kind": "pairwise",
                        "winner": ids[win],
                        "losers": [ids[lose]],
                    }
                )
    return rows


def truths_for_pool(store, pool) -> dict[str, Truth]:
    """Ground truth of image-pool objects that came from Flying Occlusions (source
    ``occlusions@VERSION/KEY``): the occludee's occupancy and pose."""
    wanted: dict[str, dict[str, str]] = {}
    for row in Dataset(store, pool.name, pool.version).manifest().select(["object_id", "source"]).to_pylist():
        spec, _, key = row["source"].partition("/")
        if spec.startswith("occlusions@") and key:
            wanted.setdefault(spec.partition("@")[2], {})[key] = row["object_id"]
    truths = {}
    for version, keys in wanted.items():
        ds = Dataset(store, "occlusions", version)
        rows = {r["sample_key"]: r for r in ds.manifest().to_pylist() if r["sample_key"] in keys}
        for sample in ds.samples(keys=list(keys)):
            r = rows[sample["__key__"]]
            truths[keys[sample["__key__"]]] = Truth(
                decode_npy(sample["occ.npy"]),
                np.asarray(r["occludee_R"], float).reshape(3, 3),
                np.asarray(r["occludee_t"], float),
                float(r["occludee_s"]),
            )
    return truths


def candidate_records(store, candidates) -> dict[str, list[dict]]:
    """The candidates of a candidates dataset, per object, as :func:`simulate` takes them."""
    ds = Dataset(store, candidates.name, candidates.version)
    rows = {r["sample_key"]: r for r in ds.manifest().to_pylist()}
    out: dict[str, list[dict]] = {}
    for sample in ds.samples():
        r = rows[sample["__key__"]]
        out.setdefault(r["object_id"], []).append(
            {
                "candidate_id": r["candidate_id"],
                "member": r["member"],
                "kind": r["kind"],
                "occupancy": decode_npy(sample["occ.npy"]),
                "R": np.asarray(r["R"], float).reshape(3, 3),
                "t": np.asarray(r["t"], float),
            }
        )
    return out
