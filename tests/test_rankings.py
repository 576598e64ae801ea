"""Rankings ingestion: every kind of bad row gets its quarantine reason and the rest of the
file is kept; native and Label Studio exports of the same judgements read the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from flywheel.feedback.exports import ExportError, check, read_native, resubmissions

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
REGISTRY = pd.DataFrame({"candidate_id": ["c1", "c2", "c3", "c4", "c5"], "object_id": ["o1", "o1", "o1", "o2", "o2"]})
ANNOTATORS = {"ann-a", "ann-b"}


def row(sid, **kw):
    base = {
        "submission_id": sid,
        "annotator_id": "ann-a",
        "object_id": "o1",
        "kind": "pairwise",
        "winner": "c1",
        "losers": ["c2"],
        "timestamp": "2026-11-21T10:00:00Z",
        "time_spent_s": 12.5,
    }
    return {**base, **kw}


GOOD = [
    row("s1"),
    row("s2", kind="best-of-n", winner="c2", losers=["c1", "c3"], geometry=7, texture=5.5),
    row("s3", kind="reject-all", winner=None, losers=["c1", "c2", "c3"], annotator_id="ann-b"),
]
BAD = {
    "unknown object": row("b1", object_id="o9"),
    "unknown candidate": row("b2", losers=["c9"]),
    "candidate of another object": row("b3", losers=["c4"]),
    "self-comparison": row("b4", winner="c1", losers=["c1"]),
    "unknown annotator": row("b5", annotator_id="intruder"),
    "future timestamp": row("b6", timestamp="2027-01-01T00:00:00Z"),
    "impossible duration": row("b7", time_spent_s=-3),
    "malformed row": row("b8", time_spent_s="abc"),
}


def check_rows(raw):
    return check(raw, "export.jsonl", candidates=REGISTRY, annotators=ANNOTATORS, max_time_spent_s=3600, now=NOW)


def jsonl(rows, extra_lines=()):
    return ("\n".join([json.dumps(r) for r in rows] + list(extra_lines)) + "\n").encode()


def test_every_bad_row_gets_its_reason_and_the_rest_is_kept():
    data = jsonl(GOOD + list(BAD.values()), extra_lines=["{not json", "[1, 2]", json.dumps(row("b9", kind="ranked"))])
    good, quarantine = check_rows(read_native(data, "export.jsonl"))
    assert good.column("submission_id").to_pylist() == ["s1", "s2", "s3"]
    reasons = dict(zip(quarantine["item_id"].str.split(":").str[-1], quarantine["reason"]))
    for sid, (reason, _) in zip([r["submission_id"] for r in BAD.values()], BAD.items()):
        assert reasons[sid] == reason, (sid, reasons)
    assert list(quarantine["reason"]).count("malformed row") == 4  # b8, bad JSON, not an object, bad kind
    assert all(d and d != "None" for d in quarantine["detail"])
    s2 = good.slice(1, 1).to_pylist()[0]
    assert s2["losers"] == ["c1", "c3"] and s2["geometry"] == 7 and s2["completeness"] is None


def test_every_form_of_self_comparison_is_quarantined():
    rows = [
        row("p", winner="c1", losers=["c1"]),
        row("w", kind="best-of-n", winner="c2", losers=["c1", "c2"]),
        row("t", kind="best-of-n", winner="c2", losers=["c1", "c3", "c1"]),
        row("r", kind="reject-all", winner=None, losers=["c3", "c3"]),
        row("ok", kind="best-of-n", winner="c2", losers=["c1", "c3"]),
        row("ok2", object_id="o2", winner="c4", losers=["c5"]),
    ]
    good, quarantine = check_rows(read_native(jsonl(rows), "export.jsonl"))
    assert good.column("submission_id").to_pylist() == ["ok", "ok2"]
    assert list(quarantine["reason"]) == ["self-comparison"] * 4
    assert [i.split(":")[-1] for i in quarantine["item_id"]] == ["p", "w", "t", "r"]


def test_resubmissions_count_once_and_conflicts_are_quarantined():
    data = jsonl([row("s1"), row("s1"), row("s2"), row("s2", winner="c2", losers=["c1"])])
    good, quarantine = check_rows(read_native(data, "export.jsonl"))
    assert good.column("submission_id").to_pylist() == ["s1"]
    assert list(quarantine["reason"]) == ["conflicting resubmission"] * 2


def test_a_cumulative_export_against_what_was_ingested():
    first, _ = check_rows(
        read_native(jsonl([row("s1"), row("s2", kind="reject-all", winner=None, losers=["c1"])]), "day1.jsonl")
    )
    # the next export repeats both (s2 unchanged, s1 changed its mind) and adds s3
    later = [row("s1", winner="c2", losers=["c1"]), row("s2", kind="reject-all", winner=None, losers=["c1"]), row("s3")]
    good, _ = check_rows(read_native(jsonl(later), "day2.jsonl"))
    duplicate, conflicting = resubmissions(good, first)
    assert duplicate.tolist() == [False, True, False] and conflicting.tolist() == [True, False, False]
    assert not any(resubmissions(good, None)[0]) and not any(resubmissions(good, first.slice(0, 0))[1])


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    frame = pd.DataFrame([{**r, "losers": ";".join(r["losers"])} for r in GOOD])
    from_csv, _ = check_rows(read_native(frame.to_csv(index=False).encode(), "x.csv"))
    frame.to_parquet(tmp_path / "x.parquet")
    from_parquet, _ = check_rows(read_native((tmp_path / "x.parquet").read_bytes(), "x.parquet"))
    from_jsonl, _ = check_rows(read_native(jsonl(GOOD), "x.jsonl"))
    assert from_csv.equals(from_jsonl) and from_parquet.equals(from_jsonl)
    with pytest.raises(ExportError, match="x.xml: unknown export format"):
        read_native(b"<x/>", "x.xml")


# -- aggregation ---------------------------------------------------------------------------------


def judgements(rows):
    good, q = check_rows(pd.DataFrame(rows))
    assert q.empty, q
    return good


def pairwise(sid, obj, winner, loser, annotator="ann-a"):
    return row(sid, object_id=obj, winner=winner, losers=[loser], annotator_id=annotator)


def test_bradley_terry_orders_candidates_and_decides():
    from flywheel.feedback.aggregate import DecisionRules, decide, preference_pairs

    rows = [pairwise(f"p{i}", "o1", w, lo) for i, (w, lo) in enumerate([("c1", "c2"), ("c2", "c3"), ("c1", "c3")] * 4)]
    rows += [
        row(
            f"r{i}",
            object_id="o2",
            kind="reject-all",
            winner=None,
            losers=["c4", "c5"],
            annotator_id="ann-a" if i % 2 else "ann-b",
        )
        for i in range(3)
    ]
    rows += [pairwise("q1", "o2", "c4", "c5")]
    rankings = judgements(rows)
    decisions, scores = decide(rankings, REGISTRY, DecisionRules(alpha=0.6))
    d = decisions.set_index("object_id")
    s = scores.set_index("candidate_id")["strength"]
    assert s["c1"] > s["c2"] > s["c3"]
    assert d.loc["o1", "decision"] == "accept" and d.loc["o1", "winner"] == "c1" and d.loc["o1", "runner_up"] == "c2"
    assert 0.6 <= d.loc["o1", "score"] <= 1 and 0.5 < d.loc["o1", "confidence"] <= 1
    # ann-b rejected twice (one vote), ann-a once and ranked once (half a vote)
    assert d.loc["o2", "decision"] == "hard-case" and (d.loc["o2", "judgements"], d.loc["o2", "rejects"]) == (2, 1.5)
    assert (
        decide(rankings, REGISTRY, DecisionRules(alpha=0.99))[0].set_index("object_id").loc["o1", "decision"]
        == "below-threshold"
    )
    pairs = preference_pairs(decisions, rankings)
    assert pairs[["winner", "loser", "times"]].values.tolist() == [["c1", "c2", 4], ["c1", "c3", 4]]


def test_annotator_weights_count_in_the_fit():
    """A reliable annotator's two votes outweigh an unreliable one's three; equal weights
    are no weights."""
    from flywheel.feedback.aggregate import DecisionRules, decide

    rows = [pairwise(f"a{i}", "o1", "c1", "c2", "ann-a") for i in range(2)]
    rows += [pairwise(f"b{i}", "o1", "c2", "c1", "ann-b") for i in range(3)]
    rankings, rules = judgements(rows), DecisionRules(alpha=0.5)
    winner = lambda weights: decide(rankings, REGISTRY, rules, weights)[0].set_index("object_id").loc["o1", "winner"]  # noqa: E731
    assert winner(None) == "c2"
    assert winner({"ann-a": 0.9, "ann-b": 0.1}) == "c1"
    plain = decide(rankings, REGISTRY, rules)[1]["strength"]
    assert decide(rankings, REGISTRY, rules, {"ann-a": 0.3, "ann-b": 0.3})[1]["strength"].tolist() == pytest.approx(
        plain.tolist()
    )


def test_agreement_and_gold_accuracy():
    from flywheel.feedback.aggregate import agreement, annotator_stats, comparisons

    items = [("o1", "c1", "c2"), ("o1", "c3", "c2"), ("o1", "c1", "c3"), ("o2", "c5", "c4")]
    rows = [pairwise(f"a{i}", o, w, lo, "ann-a") for i, (o, w, lo) in enumerate(items)]
    rows += [pairwise(f"b{i}", o, w, lo, "ann-b") for i, (o, w, lo) in enumerate(items)]
    rankings = judgements(rows)
    result = agreement(comparisons(rankings), min_overlap=3)
    assert result["cohen"]["ann-a~ann-b"] == pytest.approx(1.0) and result["overlapping_items"] == 4
    flipped = [pairwise(f"b{i}", o, lo, w, "ann-b") for i, (o, w, lo) in enumerate(items)]
    contrary = judgements(rows[:4] + flipped)
    assert agreement(comparisons(contrary), min_overlap=3)["cohen"]["ann-a~ann-b"] == pytest.approx(-1.0)
    stats = annotator_stats(contrary, comparisons(contrary), gold={"o1": "c1"}).set_index("annotator_id")
    assert stats.loc["ann-a", "gold_accuracy"] == pytest.approx(2 / 3)  # c1, c3, c1 as winners on o1
    assert stats.loc["ann-b", "gold_accuracy"] == pytest.approx(0.0)  # c2, c2, c3
    assert stats.loc["ann-a", "weight"] > stats.loc["ann-b", "weight"]


# -- simulated annotators ------------------------------------------------------------------------


def simulated_round(seed=0, objects=6, per_object_candidates=5, best_shift=0):
    """Candidates of known quality: object k's truth is an 8-cell box; candidate i is the box
    shifted by ``best_shift`` + i cells (vIoU (8 - s) / (8 + s): 1, 0.78, 0.6, 0.45, 0.33 ...),
    so quality falls with i (candidate order is shuffled)."""
    import numpy as np

    from flywheel.feedback.simulate import Truth

    rng = np.random.default_rng(seed)
    truths, candidates, registry = {}, {}, []
    for k in range(objects):
        occ = np.zeros((16,) * 3, bool)
        occ[4:12, 4:12, 3 + k % 3 : 11 + k % 3] = True
        oid = f"obj-{k}"
        truths[oid] = Truth(occ, np.eye(3), np.array([0.0, 0.0, 2.5]))
        shifts = best_shift + rng.permutation(per_object_candidates)
        candidates[oid] = [
            {
                "candidate_id": f"cand-{k:02d}{int(s):018d}",
                "member": "champion" if s % 2 else "retrieval",
                "kind": "model" if s % 2 else "retrieval",
                "occupancy": np.roll(occ, int(s), axis=0),
                "R": np.eye(3),
                "t": np.array([0.0, 0.0, 2.5]),
            }
            for s in shifts
        ]
        registry += [(c["candidate_id"], oid) for c in candidates[oid]]
    return truths, candidates, pd.DataFrame(registry, columns=["candidate_id", "object_id"])


def test_best_of_n_weighs_objects_equally_whatever_their_candidate_counts():
    """An object with one poor model candidate and one with many good ones: the model's typical
    candidate is the mean of the two objects' means, never above the oracle's mean of bests."""
    from flywheel.feedback.simulate import best_of_n

    truths, candidates, _ = simulated_round(objects=2, per_object_candidates=1, best_shift=3)  # vIoU 0.45 each
    exact = dict(candidates["obj-1"][0], kind="model", occupancy=truths["obj-1"].occupancy)
    candidates["obj-0"][0]["kind"] = "model"
    candidates["obj-1"] = [exact] * 5 + candidates["obj-1"]
    b = best_of_n(candidates, truths)
    assert b["oracle_viou"] == pytest.approx((5 / 11 + 1) / 2)
    assert b["model_viou"] == pytest.approx((5 / 11 + (5 + 5 / 11) / 6) / 2)
    assert b["model_viou"] <= b["oracle_viou"]


def test_a_noiseless_simulated_annotator_picks_the_true_best():
    from flywheel.feedback.aggregate import DecisionRules, decide
    from flywheel.feedback.simulate import SimulatedAnnotator, simulate

    truths, candidates, registry = simulated_round()
    for annotator in (SimulatedAnnotator("exact"), SimulatedAnnotator("exact-pairs", pairs_per_object=10)):
        rows = simulate([annotator], candidates, truths, per_object=1)
        good, q = check(
            pd.DataFrame(rows), "sim.jsonl", candidates=registry, annotators=None, max_time_spent_s=3600, now=NOW
        )
        assert q.empty
        decisions = decide(good, registry, DecisionRules(alpha=0.5))[0].set_index("object_id")
        for oid, cands in candidates.items():
            best = next(c["candidate_id"] for c in cands if c["candidate_id"].endswith("0" * 18))  # shift 0
            assert decisions.loc[oid, "winner"] == best, oid


def test_the_default_annotators_accept_good_candidates_and_reject_an_unlearned_models():
    """Accept rate tracks absolute quality: with the default team (config ``rounds.annotators``),
    objects whose best candidate has vIoU 1 or 0.78 are accepted, objects whose best has 0.45 (what
    a constant shape scores) go to the hard-case queue; the yield says the same from the truth."""
    from flywheel.core.config import load_config
    from flywheel.feedback.aggregate import judge_round
    from flywheel.feedback.simulate import SimulatedAnnotator, best_of_n, simulate

    rounds = load_config(environ={}).rounds
    team = [SimulatedAnnotator.from_settings(a) for a in rounds.annotators]
    rules = load_config(environ={}).rankings.rules()
    rates = {}
    for best_shift in (0, 1, 3):
        truths, candidates, registry = simulated_round(objects=40, best_shift=best_shift, seed=best_shift)
        rows = simulate(team, candidates, truths, per_object=rounds.judgements_per_object, seed=best_shift)
        good, q = check(
            pd.DataFrame(rows), "sim.jsonl", candidates=registry, annotators=None, max_time_spent_s=3600, now=NOW
        )
        assert q.empty
        judged = judge_round(good, registry, 0, **rules).metrics()
        rates[best_shift] = (judged["accept_rate"], judged["hard_cases"], best_of_n(candidates, truths)["yield"])
    assert rates[0][0] >= 0.9 and rates[1][0] >= 0.8, rates
    assert rates[3][0] <= 0.1 and rates[3][1] >= 36, rates
    assert [y for _, _, y in rates.values()] == [1.0, 1.0, 0.0]


def test_a_judgement_is_one_reject_vote_however_many_rows_it_took():
    """Six pairwise rows of one annotator and one reject-all of another: half the judgements
    reject, so the object is a hard case at reject_share 0.5 (row counting made it 1 / 7)."""
    from flywheel.feedback.aggregate import DecisionRules, decide

    pairs = [("c1", "c2"), ("c1", "c3"), ("c2", "c3")] * 2
    rows = [pairwise(f"p{i}", "o1", w, lo, annotator="ann-a") for i, (w, lo) in enumerate(pairs)]
    rows.append(row("r", kind="reject-all", winner=None, losers=["c1", "c2", "c3"], annotator_id="ann-b"))
    d = decide(judgements(rows), REGISTRY, DecisionRules(alpha=0.6, reject_share=0.5))[0].set_index("object_id")
    assert (d.loc["o1", "judgements"], d.loc["o1", "rejects"], d.loc["o1", "reject_share"]) == (2, 1.0, 0.5)
    assert d.loc["o1", "decision"] == "hard-case"
    one_row_each = decide(judgements(rows[-2:]), REGISTRY, DecisionRules(alpha=0.6, reject_share=0.6))[0]
    assert one_row_each.set_index("object_id").loc["o1", "decision"] == "accept"


def test_only_rejections_make_hard_cases_without_scores():
    from flywheel.feedback.aggregate import DecisionRules, decide

    only = judgements([row("r1", kind="reject-all", winner=None, losers=["c1", "c2", "c3"])])
    decisions, scores = decide(only, REGISTRY, DecisionRules(alpha=0.6))
    assert decisions[["object_id", "decision"]].values.tolist() == [["o1", "hard-case"]] and scores.empty


def test_a_simulated_aligner_moves_the_winners_pose_to_the_truth_within_its_noise():
    import numpy as np

    from flywheel.feedback.simulate import SimulatedAnnotator, simulate

    truths, candidates, registry = simulated_round(objects=30)
    rows = simulate([SimulatedAnnotator("aligner", align_noise_deg=5.0)], candidates, truths, per_object=1)
    good, q = check(
        pd.DataFrame(rows), "sim.jsonl", candidates=registry, annotators=None, max_time_spent_s=3600, now=NOW
    )
    assert q.empty and good["aligned_pose"].null_count == 0
    angles = []
    for pose, oid in zip(good["aligned_pose"].to_pylist(), good["object_id"].to_pylist()):
        R = np.asarray(pose["R"]).reshape(3, 3)
        angles.append(np.degrees(np.arccos(np.clip((np.trace(truths[oid].R.T @ R) - 1) / 2, -1, 1))))
        assert np.linalg.norm(np.asarray(pose["t"]) - truths[oid].t) < 0.6 and 0.7 < pose["s"] < 1.4
    assert 2 < np.mean(angles) < 8  # |N(0, 5 deg)| has mean 4 deg
    plain = simulate([SimulatedAnnotator("plain")], candidates, truths, per_object=1)
    assert all("aligned_pose" not in r for r in plain)
