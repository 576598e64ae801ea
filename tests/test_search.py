"""Best-of-N search: oversampled ensembles, the reward model's shortlist with exploration, and
the report that compares the candidates shown with N drawn at random."""

from __future__ import annotations

import numpy as np

from flywheel.feedback.search import search_report, shortlist
from flywheel.feedback.simulate import Truth
from sam3d_model.ensemble import DEFAULT_MEMBERS, oversampled


def test_an_oversampled_ensemble_keeps_its_first_n_and_proposes_k_times_as_many():
    three = oversampled(DEFAULT_MEMBERS, 3)
    assert oversampled(DEFAULT_MEMBERS, 1) == DEFAULT_MEMBERS
    for before, after in zip(DEFAULT_MEMBERS, three):
        assert after.name == before.name and after.kind == before.kind
        if before.kind == "model":
            assert after.seeds[: len(before.seeds)] == before.seeds and len(set(after.seeds)) == 3 * len(before.seeds)
        else:
            assert after.top_k == 3 * before.top_k


def test_the_shortlist_is_the_reward_models_top_n_plus_seeded_exploration():
    proposed = {f"obj-{o}": [f"c{o}-{i}" for i in range(12)] for o in range(20)}
    scores = {c: float(i) for ids in proposed.values() for i, c in enumerate(ids)}  # later proposals score higher
    shown = shortlist(proposed, scores, n=4, explore=1, seed=0)
    for oid, ids in shown.items():
        assert len(ids) == 4 and ids == [c for c in proposed[oid] if c in ids]  # kept in proposal order
        assert set(proposed[oid][-3:]) <= set(ids)  # the top 3 by reward
        assert set(ids) - set(proposed[oid][-3:]) <= set(proposed[oid][:-3])  # one explored from the rest
    explored = {next(c for c in ids if c not in proposed[oid][-3:]) for oid, ids in shown.items()}
    assert len({c.split("-")[1] for c in explored}) > 3  # exploration draws differ per object
    assert shortlist(proposed, scores, n=4, explore=1, seed=0) == shown
    assert shortlist(proposed, scores, n=4, explore=0, seed=0)["obj-0"] == proposed["obj-0"][-4:]
    assert shortlist(proposed, None, n=4, explore=1, seed=0) == proposed  # no reward model: all shown


def _grid(fill: int) -> np.ndarray:
    occ = np.zeros((8, 8, 8), bool)
    occ[:fill] = True
    return occ


def test_search_report_compares_the_shown_candidates_with_random_n_on_all_and_hardest_objects():
    """Each object has 8 proposals, one of which matches its truth; showing that one makes the
    yield 1, while 2 drawn at random find it a quarter of the time."""
    truth = Truth(_grid(4), np.eye(3), np.zeros(3))
    proposals, good = {}, set()
    for o in range(40):
        cands = [
            {"candidate_id": f"c{o}-{i}", "occupancy": _grid(4 if i == o % 8 else 1), "R": np.eye(3), "t": np.zeros(3)}
            for i in range(8)
        ]
        proposals[f"obj-{o}"] = cands
        good.add(f"c{o}-{o % 8}")
    truths = {oid: truth for oid in proposals}
    report = search_report(proposals, good, truths, n=2, acceptable=0.6)
    assert report["shown_yield"] == report["proposed_yield"] == 1.0 and report["shown_oracle_viou"] == 1.0
    assert 0.05 < report["random_yield"] < 0.5  # 2 of 8: 1/4 expected
    assert report["hard_objects"] == 10 and report["proposed_per_object"] == 8
    assert report["hard_shown_yield"] == 1.0 and report["hard_random_yield"] <= 1.0
    shown_bad = {f"c{o}-{(o + 1) % 8}" for o in range(40)}
    worse = search_report(proposals, shown_bad, truths, n=2, acceptable=0.6)
    assert worse["shown_yield"] == 0.0 and worse["random_yield"] == report["random_yield"]  # same seeded draw
