"""Best-of-N search: which of the proposed candidates annotators are shown, and what that
choice was worth.

With a reward model the ensemble proposes ``oversample`` x N candidates per object; the N
shown are the reward model's top N − ``explore`` and ``explore`` drawn at random from the rest
(so what the reward model ranks low is still judged, and becomes its next training pairs).
Without one, every proposal is shown. :func:`search_report` compares, on the objects whose
truth is known, the candidates shown with N drawn at random from the same proposals (what
unguided search would have shown), on all objects and on the hardest quarter.
"""

from __future__ import annotations

import numpy as np

from flywheel.core.digests import digest_of
from flywheel.feedback.simulate import Truth, quality

#: The hardest objects: this share with the lowest mean proposal quality.
HARD_SHARE = 0.25


def _rng(seed: int, object_id: str) -> np.random.Generator:
    return np.random.default_rng(int(digest_of({"seed": seed, "object": object_id})[:12], 16))


def shortlist(
    proposed: dict[str, list[str]], scores: dict[str, float] | None, n: int, explore: int, seed: int
) -> dict[str, list[str]]:
    """object id -> the candidate ids shown (in proposal order). ``proposed``: object id ->
    candidate ids in proposal order; ``scores``: candidate id -> reward (None: show all)."""
    shown = {}
    for oid, ids in proposed.items():
        if scores is None or len(ids) <= n:
            shown[oid] = list(ids)
            continue
        ranked = sorted(ids, key=lambda c: (-scores[c], ids.index(c)))
        top = ranked[: max(0, n - explore)]
        rest = ranked[len(top) :]
        picked = set(top) | {str(c) for c in _rng(seed, oid).choice(rest, size=n - len(top), replace=False)}
        shown[oid] = [c for c in ids if c in picked]
    return shown


def search_report(
    proposals: dict[str, list[dict]],
    shown: set[str],
    truths: dict[str, Truth],
    n: int,
    acceptable: float,
    seed: int = 0,
) -> dict[str, float]:
    """The oracle best-of-N vIoU (the mean over objects of the best candidate's vIoU) and the
    yield (share of objects with a candidate of vIoU >= ``acceptable``) of the candidates
    ``shown`` (``shown_``), of N drawn at random from the same proposals (``random_``) and of
    all proposals (``proposed_``); the same for the hardest quarter of the objects (``hard_``:
    lowest mean vIoU over all proposals). ``proposals``: object id -> candidate records as
    :func:`~flywheel.feedback.simulate.best_of_n` takes them."""
    viou = {
        o: {c["candidate_id"]: quality(c["occupancy"], c["R"], c["t"], truths[o], 0.0, 0.0) for c in cands}
        for o, cands in proposals.items()
        if o in truths and cands
    }
    arms = {
        "shown": {o: [q[c] for c in q if c in shown] for o, q in viou.items()},
        "random": {
            o: [list(q.values())[i] for i in _rng(seed + 1, o).choice(len(q), size=min(n, len(q)), replace=False)]
            for o, q in viou.items()
        },
        "proposed": {o: list(q.values()) for o, q in viou.items()},
    }
    hard = sorted(viou, key=lambda o: (np.mean(arms["proposed"][o]), o))[: int(np.ceil(HARD_SHARE * len(viou)))]
    out = {
        "proposed_per_object": float(np.mean([len(q) for q in viou.values()])) if viou else float("nan"),
        "hard_objects": float(len(hard)),
    }
    for arm, scores in arms.items():
        for prefix, objects in (("", list(scores)), ("hard_", hard)):
            best = np.array([max(scores[o]) for o in objects if scores[o]])
            out[f"{prefix}{arm}_oracle_viou"] = float(best.mean()) if len(best) else float("nan")
            out[f"{prefix}{arm}_yield"] = float((best >= acceptable).mean()) if len(best) else float("nan")
    return out
