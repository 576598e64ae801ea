"""Judgements people make in the annotation app (:mod:`flywheel.feedback.app`): what each
annotator is shown, and how a judgement becomes a native rankings row in the store.

Layout in the store, per candidates version::

    annotation/<version>/judgements/<annotator>/<submission_id>/<revision>.json   one native row each

A judgement is written once, before the app answers: a retry of the same submission (a
double click, a resent form) finds it and records nothing new; the same submission id with
another choice is refused. Changing a judgement (undo) writes its next revision, with a
later timestamp; earlier revisions are kept. :func:`export_rows` gathers the latest revision
of each as one native export that ``flywheel rankings`` / ``close`` ingest like any other
(ingestion takes a later row of a known submission id as its revision).

Order is per annotator: tasks and the candidates within a task are shuffled by a digest of
(annotator, candidates version[, object]), so two annotators see different orders, one
annotator sees the same order on every visit, and position tells nothing of the member
that made a candidate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from flywheel.core.digests import digest_of
from flywheel.core.store import Store

SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
ANNOTATOR = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NONE_ACCEPTABLE = "none"


class JudgementError(ValueError):
    """A submission that cannot be recorded; the message names the field and the reason."""


class Conflict(JudgementError):
    """A submission id already recorded with another choice."""


@dataclass(frozen=True)
class AppTask:
    """One object to judge: its id and its candidates' ids (in the registry's order)."""

    object_id: str
    candidates: tuple[str, ...]


def shuffled(items: list[str] | tuple[str, ...], *key: str) -> list[str]:
    """``items`` in an order fixed by ``key`` (annotator, version[, object])."""
    rng = np.random.default_rng(int(digest_of(list(key))[:12], 16))
    return [items[i] for i in rng.permutation(len(items))]


def judgement_prefix(version: str, annotator: str | None = None) -> str:
    base = f"annotation/{version}/judgements"
    return f"{base}/{annotator}" if annotator else base


def best_of_n_row(
    task: AppTask,
    annotator: str,
    submission_id: str,
    choice: str,
    time_spent_s: float,
    now: datetime | None = None,
) -> dict:
    """The native row of a best-of-N judgement: ``choice`` is the winner's candidate id (the
    others lose) or :data:`NONE_ACCEPTABLE` (a reject-all of every candidate shown)."""
    if not SUBMISSION_ID.match(submission_id):
        raise JudgementError(f"submission_id {submission_id!r}: 8-64 letters, digits, '-' or '_'")
    if not (0 < time_spent_s < 24 * 3600):
        raise JudgementError(f"time_spent_s {time_spent_s}: must be a positive number of seconds under a day")
    if choice != NONE_ACCEPTABLE and choice not in task.candidates:
        raise JudgementError(f"choice {choice!r}: not a candidate of object {task.object_id}")
    reject = choice == NONE_ACCEPTABLE
    return {
        "submission_id": submission_id,
        "annotator_id": annotator,
        "object_id": task.object_id,
        "kind": "reject-all" if reject else "best-of-n",
        "winner": None if reject else choice,
        "losers": [c for c in task.candidates if c != choice],
        "timestamp": (now or datetime.now(UTC)).isoformat(),
        "time_spent_s": round(float(time_spent_s), 1),
    }


def pairwise_row(
    task: AppTask,
    annotator: str,
    submission_id: str,
    pair: tuple[str, str],
    choice: str,
    time_spent_s: float,
    now: datetime | None = None,
) -> dict:
    """The native row of one comparison of a pairwise tournament: ``choice`` is one of
    ``pair`` (it beats the other) or :data:`NONE_ACCEPTABLE` (no candidate of the task is
    acceptable: a reject-all of every candidate, which ends the tournament)."""
    if choice == NONE_ACCEPTABLE:
        return best_of_n_row(task, annotator, submission_id, choice, time_spent_s, now)
    if choice not in pair:
        raise JudgementError(f"choice {choice!r}: not one of the two candidates compared")
    row = best_of_n_row(task, annotator, submission_id, choice, time_spent_s, now)
    return {**row, "kind": "pairwise", "losers": [c for c in pair if c != choice]}


def next_pair(order: list[str], rows: list[dict]) -> tuple[str, str] | None:
    """The next comparison of a pairwise tournament over the candidates in ``order`` (the
    annotator's order), given the annotator's judgements of that object: the current winner
    against the next candidate; None when the tournament is over (every candidate compared,
    or the task rejected)."""
    if any(r["kind"] == "reject-all" for r in rows):
        return None
    holder = order[0]
    for challenger in order[1:]:
        decided = next(
            (r for r in rows if r["kind"] == "pairwise" and {r["winner"], *r["losers"]} == {holder, challenger}),
            None,
        )
        if decided is None:
            return holder, challenger
        holder = decided["winner"]
    return None


def _decision(row: dict) -> tuple:
    return row["object_id"], row["kind"], row["winner"], sorted(row["losers"]), json.dumps(row.get("aligned_pose"))


def _revisions(store: Store, version: str, annotator: str, submission_id: str) -> list[str]:
    prefix = f"{judgement_prefix(version, annotator)}/{submission_id}/"
    return sorted(info.key for info in store.list(prefix) if info.key.endswith(".json"))


def record(store: Store, version: str, row: dict, revise: bool = False) -> bool:
    """Write a judgement: True if written now, False when its latest revision already says the
    same (a retry). Without ``revise`` a submission id is written once (:class:`Conflict` for
    the same id with another decision); with it, a known submission gets its next revision.
    Callers serialise calls (one writer per app)."""
    keys = _revisions(store, version, row["annotator_id"], row["submission_id"])
    if keys:
        latest = json.loads(store.get_bytes(keys[-1]))
        if _decision(latest) == _decision(row):
            return False
        if not revise:
            raise Conflict(f"submission {row['submission_id']}: already recorded with another choice")
        if latest["object_id"] != row["object_id"]:
            raise JudgementError(f"submission {row['submission_id']}: a judgement of another object")
    elif revise:
        raise JudgementError(f"submission {row['submission_id']}: nothing recorded to change")
    key = f"{judgement_prefix(version, row['annotator_id'])}/{row['submission_id']}/{len(keys):04d}.json"
    store.put_bytes(key, json.dumps(row, sort_keys=True).encode())
    return True


def recorded(store: Store, version: str, annotator: str | None = None) -> list[dict]:
    """The latest revision of every judgement recorded for ``version`` (of one annotator, or
    all), oldest first."""
    latest: dict[str, str] = {}
    for info in store.list(judgement_prefix(version, annotator) + "/"):
        if info.key.endswith(".json"):
            submission = info.key.rsplit("/", 1)[0]
            latest[submission] = max(latest.get(submission, ""), info.key)
    rows = [json.loads(store.get_bytes(key)) for key in latest.values()]
    return sorted(rows, key=lambda r: (r["timestamp"], r["submission_id"]))


def export_rows(store: Store, version: str) -> str:
    """Every recorded judgement of ``version`` (latest revisions) as a native JSONL export."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in recorded(store, version))


def choices(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(annotator, object) -> what they chose in the end: the winner of their best-of-N
    judgement or of their tournament's last comparison, or :data:`NONE_ACCEPTABLE`."""
    out: dict[tuple[str, str], str] = {}
    for r in sorted(rows, key=lambda r: (r["timestamp"], r["submission_id"])):
        out[(r["annotator_id"], r["object_id"])] = r["winner"] or NONE_ACCEPTABLE
    return out


def annotator_report(rows: list[dict], gold: dict[str, str]) -> list[dict]:
    """Per annotator: tasks finished, judgements, median seconds per judgement, agreement (the
    share of their objects that others judged too where their choice is the others' most
    common one) and gold accuracy (their choice on gold objects: object id -> best candidate)."""
    chosen = choices(rows)
    by_object: dict[str, dict[str, str]] = {}
    for (annotator, oid), choice in chosen.items():
        by_object.setdefault(oid, {})[annotator] = choice
    report = []
    for annotator in sorted({r["annotator_id"] for r in rows}):
        mine = [r for r in rows if r["annotator_id"] == annotator]
        agree, shared, hits, golds = 0, 0, 0, 0
        for (who, oid), choice in chosen.items():
            if who != annotator:
                continue
            others = [c for a, c in by_object[oid].items() if a != annotator]
            if others:
                shared += 1
                agree += choice == max(sorted(set(others)), key=others.count)
            if oid in gold:
                golds += 1
                hits += choice == gold[oid]
        report.append(
            {
                "annotator": annotator,
                "tasks": len({r["object_id"] for r in mine}),
                "judgements": len(mine),
                "median_s": float(np.median([r["time_spent_s"] for r in mine])),
                "agreement": agree / shared if shared else float("nan"),
                "shared_tasks": shared,
                "gold_accuracy": hits / golds if golds else float("nan"),
                "gold_tasks": golds,
            }
        )
    return report


def with_gold(order: list[str], gold: set[str], rate: float) -> list[str]:
    """``order`` with its gold objects moved to every round(1 / ``rate``)-th place (the rest
    keep their order), so an annotator meets them at that rate from the start."""
    golds = [o for o in order if o in gold]
    rest = [o for o in order if o not in gold]
    if not golds or rate <= 0:
        return order
    step = max(1, round(1 / rate))
    out: list[str] = []
    while rest or golds:
        if golds and (len(out) + 1) % step == 0 or not rest:
            out.append(golds.pop(0))
        else:
            out.append(rest.pop(0))
    return out
