"""The human-feedback domain without an orchestrator: exports ingested into a rankings
version, then a round's decisions committed as SFT / preference / hard-case datasets, on
small real datasets in a real store (no Prefect, no MLflow)."""

from __future__ import annotations

import json

import pytest
from conftest import write_small_round

from flywheel.core.codecs import decode_npy
from flywheel.core.config import RankingsConfig, StoreConfig
from flywheel.core.contracts import RANKINGS
from flywheel.core.datasets import Dataset, version_of
from flywheel.core.store import LocalStore
from flywheel.feedback.aggregate import judge_round
from flywheel.feedback.decisions import write_decisions
from flywheel.feedback.ingest import ingest_exports

OBJECTS = ("obj-a", "obj-b")
SETTINGS = {"annotators": None, "max_file_bytes": 1_000_000, "max_time_spent_s": 3600.0}


@pytest.fixture
def round_data(tmp_path):
    """An image pool of two objects and three candidates for each."""
    store = LocalStore(tmp_path / "store")
    return (store, *write_small_round(store, OBJECTS))


def _export(path, rows):
    base = {"timestamp": "2026-11-21T10:00:00Z", "time_spent_s": 10.0}
    path.write_text("".join(json.dumps({**base, **r}) + "\n" for r in rows) + "{not json\n")
    return str(path)


def ingest_one(store, candidates, export: str, digest: str, previous):
    """Commit the next rankings version with one export -> (ref, [its FileReport])."""
    inputs = {"files": [digest], "previous": previous, "candidates": candidates}
    return ingest_exports(
        store,
        StoreConfig(),
        [(export, digest)],
        version=version_of(RANKINGS, inputs=inputs),
        inputs=inputs,
        candidates=candidates,
        previous=previous,
        settings=SETTINGS,
        writer_options={},
    )


def commit_decisions(store, judged, rankings, candidates, pool) -> dict:
    """Round 0's decision datasets from a judged round."""
    d = judged.decisions
    return write_decisions(
        store,
        accepted=d[d["decision"] == "accept"],
        preferences=judged.preferences,
        hard=d[d["decision"] == "hard-case"],
        rankings=rankings,
        candidates=candidates,
        pool=pool,
        round_index=0,
        inputs={"rankings": rankings, "round": 0},
        code_version="test",
        writer_options={},
    )


FIRST_S1 = {
    "submission_id": "s1",
    "annotator_id": "ann-2",
    "object_id": "obj-a",
    "kind": "best-of-n",
    "winner": "obj-a-c2",
    "losers": ["obj-a-c0", "obj-a-c1"],
}
FIRST_S7 = {
    "submission_id": "s7",
    "annotator_id": "ann-2",
    "object_id": "obj-b",
    "kind": "reject-all",
    "winner": None,
    "losers": ["obj-b-c0", "obj-b-c1", "obj-b-c2"],
}


def test_exports_become_rankings_then_round_datasets(round_data, tmp_path):
    store, pool, candidates = round_data
    first = _export(
        tmp_path / "batch-1.jsonl",
        [
            {
                "submission_id": f"s{i}",
                "annotator_id": ann,
                "object_id": "obj-a",
                "kind": "best-of-n",
                "winner": "obj-a-c2",
                "losers": ["obj-a-c0", "obj-a-c1"],
            }
            for i, ann in enumerate(("ann-1", "ann-2"))
        ]
        + [
            {
                "submission_id": "s9",
                "annotator_id": "ann-1",
                "object_id": "obj-b",
                "kind": "reject-all",
                "winner": None,
                "losers": ["obj-b-c0", "obj-b-c1", "obj-b-c2"],
            }
        ],
    )

    def ingest(export: str, digest: str, previous):
        return ingest_one(store, candidates, export, digest, previous)

    ref, [report] = ingest(first, "d1", None)
    assert (report.rows, report.accepted, report.duplicates, report.quarantined) == (4, 3, 0, {"malformed row": 1})
    assert report.line() == (
        "batch-1.jsonl [native jsonl]: 4 rows read, 3 accepted, 0 already ingested, 0 revised, "
        "1 quarantined (malformed row 1)"
    )
    rankings = Dataset(store, ref.name, ref.version)
    assert rankings.ref.num_rows == 3 and rankings.quarantine()["reason"].to_pylist() == ["malformed row"]
    assert store.get_bytes("rankings/raw/d1/batch-1.jsonl") == (tmp_path / "batch-1.jsonl").read_bytes()

    # the same file again plus a new one: only the new submissions count
    second = _export(
        tmp_path / "batch-2.jsonl",
        [FIRST_S1, FIRST_S7],
    )
    # a file that cannot be read: its line says why
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not parquet")
    _, [unreadable] = ingest(str(tmp_path / "bad.parquet"), "d0", ref)
    assert unreadable.line().startswith("bad.parquet [native parquet]: 0 rows read, 0 accepted")
    assert "1 quarantined (unreadable file 1): bad.parquet: not a readable Parquet file" in unreadable.line()
    ref2, [report2] = ingest(second, "d2", ref)
    assert report2.accepted == 1 and report2.duplicates == 1 and ref2.num_rows == 4

    # s1 edited later (a revision supersedes it) and s7 changed at the same time (a conflict)
    edits = [
        {**FIRST_S1, "winner": "obj-a-c0", "losers": ["obj-a-c2", "obj-a-c1"], "timestamp": "2026-11-21T11:00:00Z"},
        {**FIRST_S7, "losers": ["obj-b-c0"]},
    ]
    ref3, [report3] = ingest(_export(tmp_path / "batch-3.jsonl", edits), "d3", ref2)
    assert (report3.revised, report3.quarantined.get("conflicting resubmission")) == (1, 1)
    rows = {r["submission_id"]: r for r in Dataset(store, ref3.name, ref3.version).manifest().to_pylist()}
    assert len(rows) == 4 and (rows["s1"]["winner"], rows["s1"]["revision"]) == ("obj-a-c0", 1)
    assert rows["s7"]["losers"] == ["obj-b-c0", "obj-b-c1", "obj-b-c2"] and rows["s7"]["revision"] == 0

    rules = RankingsConfig().rules()
    judged = judge_round(
        Dataset(store, ref2.name, ref2.version).manifest(),
        Dataset(store, candidates.name, candidates.version).manifest().to_pandas(),
        0,
        **rules,
    )

    def decide() -> dict:
        return commit_decisions(store, judged, ref2, candidates, pool)

    refs = decide()
    sft, prefs, hard = (Dataset(store, refs[n].name, refs[n].version) for n in ("sft", "preferences", "hard-cases"))
    assert sft.manifest().column("candidate_id").to_pylist() == ["obj-a-c2"]
    assert hard.manifest().column("object_id").to_pylist() == ["obj-b"]
    assert sorted(prefs.manifest().column("loser").to_pylist()) == ["obj-a-c0", "obj-a-c1"]
    winner = next(sft.samples())
    assert decode_npy(winner["occ.npy"]).sum() == 48  # c2: 3 of its 4 slabs of 16 voxels
    assert winner["rgb.png"] and winner["mask.png"]
    # committed once: deciding again finds the same versions and writes nothing
    again = decide()
    assert again == refs


def test_gates_fail_on_an_export_without_usable_judgements_and_on_a_reject_all_jump(round_data, tmp_path):
    """What a misreading parser produces: a file that yields nothing, or winners read as
    reject-alls. Both fail the rankings gate; a normal follow-up export passes."""
    from flywheel.core.config import ValidationConfig
    from flywheel.validation.suites import validate

    store, _, candidates = round_data

    def ingest(rows, name, previous=None):
        ref, _ = ingest_one(store, candidates, _export(tmp_path / name, rows), name, previous)
        return ref, validate(Dataset(store, ref.name, ref.version), ValidationConfig())

    good = [{**FIRST_S1, "submission_id": f"g{i}", "annotator_id": f"ann-{i}"} for i in range(4)]
    base, report = ingest(good, "good.jsonl")
    assert report.success, report.summary()
    _, report = ingest([{**FIRST_S1, "kind": "pairwise"}], "misread.jsonl", base)  # one malformed row only
    assert [(f.table, f.column) for f in report.failures] == [("files", "usable")]
    rejects = [{**FIRST_S7, "submission_id": f"r{i}", "annotator_id": f"ann-{i}"} for i in range(4)]
    _, report = ingest(rejects, "rejects.jsonl", base)
    assert [(f.table, f.column) for f in report.failures] == [("reject_share", "reject_share_jump")]
    more = [{**FIRST_S1, "submission_id": f"m{i}", "annotator_id": f"ann-{i}"} for i in range(3)] + rejects[:1]
    _, report = ingest(more, "more.jsonl", base)
    assert report.success, report.summary()


def test_an_aligned_pose_becomes_the_winners_layout_target(round_data, tmp_path):
    """The layout alignment step: a judgement may carry the winner's pose as the annotator
    aligned it; the latest such pose is the SFT row's layout target (pose_source "aligned"),
    a bad one quarantines its row, and winners nobody aligned keep the candidate's pose."""
    import numpy as np

    store, pool, candidates = round_data
    turn = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)  # 90 degrees about z
    early = {"R": np.eye(3).tolist(), "t": [0.0, 0.1, 3.0], "s": 0.9}
    late = {"R": turn.tolist(), "t": [0.2, 0.0, 2.8], "s": 1.1}
    row = {"kind": "best-of-n", "winner": "obj-a-c2", "losers": ["obj-a-c0", "obj-a-c1"], "object_id": "obj-a"}
    other = {"kind": "best-of-n", "winner": "obj-b-c1", "losers": ["obj-b-c0", "obj-b-c2"], "object_id": "obj-b"}
    export = _export(
        tmp_path / "aligned.jsonl",
        [
            {**row, "submission_id": "a1", "annotator_id": "ann-1", "aligned_pose": early},
            {
                **row,
                "submission_id": "a2",
                "annotator_id": "ann-2",
                "aligned_pose": late,
                "timestamp": "2026-11-21T12:00:00Z",
            },
            {
                **row,
                "submission_id": "a3",
                "annotator_id": "ann-3",
                "aligned_pose": {**late, "R": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]},
            },
            {**other, "submission_id": "b1", "annotator_id": "ann-1"},
            {**other, "submission_id": "b2", "annotator_id": "ann-2"},
        ],
    )
    ref, [report] = ingest_one(store, candidates, export, "da", None)
    quarantined = Dataset(store, ref.name, ref.version).quarantine().to_pylist()
    assert [q["detail"] for q in quarantined if "aligned_pose" in q["detail"]] == [
        "aligned_pose: R is not a rotation (R^T R != I or det < 0)"
    ]
    judged = judge_round(
        Dataset(store, ref.name, ref.version).manifest(),
        Dataset(store, candidates.name, candidates.version).manifest().to_pandas(),
        0,
        **RankingsConfig().rules(),
    )
    assert judged.metrics()["aligned"] == 1
    refs = commit_decisions(store, judged, ref, candidates, pool)
    sft = {r["object_id"]: r for r in Dataset(store, "sft", refs["sft"].version).manifest().to_pylist()}
    assert sft["obj-a"]["pose_source"] == "aligned"
    assert np.allclose(sft["obj-a"]["R"], turn.ravel()) and np.allclose(sft["obj-a"]["t"], late["t"])
    assert sft["obj-a"]["s"] == pytest.approx(1.1)
    assert sft["obj-b"]["pose_source"] == "candidate" and np.allclose(sft["obj-b"]["t"], [0, 0, 2.5])
