"""The round ledger: what each closed flywheel round committed, in the store.

A *series* is a sequence of rounds run with one store and one set of the config sections
that shape them; its id is a digest of those. Round ``k`` is committed when its record,
``rounds/<series>/round-<k>.json``, exists: the record is written last, atomically, so a
round killed anywhere before is simply not committed, and re-running it reuses its
finished tasks. Round ``k`` starts from the champion that round ``k-1`` ended with (round
0 from the model bootstrapped from synthetic data), never from the moving registry alias,
so a re-run of a round sees the same inputs as its first run.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from flywheel.core.config import FlywheelConfig, shaping
from flywheel.core.digests import digest_of
from flywheel.core.store import Store
from flywheel.rounds.record import RoundRecord
from flywheel.tracking.plots import curves


def series_id(cfg: FlywheelConfig) -> str:
    """A series is one store and one shaping config (:func:`flywheel.core.config.shaping`)."""
    return digest_of(shaping(cfg))[:12]


def record_key(series: str, round_index: int) -> str:
    return f"rounds/{series}/round-{round_index:04d}.json"


def read_round(store: Store, series: str, round_index: int) -> RoundRecord | None:
    key = record_key(series, round_index)
    return RoundRecord.from_json(store.get_bytes(key)) if store.exists(key) else None


def write_round(store: Store, record: RoundRecord) -> RoundRecord:
    """Commit ``record`` (create-if-absent: a round is committed once, whoever writes first);
    returns the committed record."""
    key = record_key(record.series, record.round)
    if store.create_if_absent(key, record.to_json()):
        return record
    return RoundRecord.from_json(store.get_bytes(key))


class RoundBusy(RuntimeError):
    """Another round holds the one-round-at-a-time lock."""


@contextmanager
def round_lock(path: Path, wait_s: float):
    """One round at a time for everything sharing this state folder: an exclusive ``flock`` on
    ``path``, which the kernel releases when its holder exits or is killed (no stale lock to
    clean up after a crash). Waits up to ``wait_s``, then raises :class:`RoundBusy` naming
    the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    raise RoundBusy(
                        f"another flywheel round is running ({f.read().strip() or 'holder unknown'}; "
                        f"lock {path}); waited {wait_s:g} s (rounds.lock_wait_s)"
                    ) from None
                time.sleep(0.5)
        try:
            f.seek(0)
            f.truncate()
            f.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "since": datetime.now(UTC).isoformat(timespec="seconds"),
                    }
                )
                + "\n"
            )
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def committed_rounds(store: Store, series: str) -> list[RoundRecord]:
    """The series' committed round records, oldest first."""
    keys = sorted(o.key for o in store.list(f"rounds/{series}/") if o.key.endswith(".json"))
    return [RoundRecord.from_json(store.get_bytes(k)) for k in keys]


def summary_rows(records: list[RoundRecord]) -> list[dict]:
    """One flat row per round: held-out metrics, decisions, data volumes, stage seconds."""
    rows = []
    for r in records:
        row: dict = {"round": r.round, "promoted": r.promotion.promote, "champion_after": r.champion_after.uri}
        for who in ("champion", "challenger"):
            row.update({f"{who}_{k}": v for k, v in r.evaluation[who].items()})
        row.update(r.rankings)
        row.update({f"rows_{k}": v for k, v in r.volumes.items()})
        row.update({f"seconds_{k}": v for k, v in r.seconds.items()})
        rows.append(row)
    return rows


def summary_plot(records: list[RoundRecord], path: str | Path) -> Path:
    """Held-out metrics (champion vs challenger), accept rate and data volumes per round."""
    x = [r.round for r in records]
    series: dict = {}
    for metric in ("viou", "f1", "add_s_accuracy", "rotation_error_deg"):
        series[f"held-out {metric}"] = {
            who: (x, [r.evaluation[who][metric] for r in records]) for who in ("champion", "challenger")
        }
    series["accept rate"] = (x, [r.rankings["accept_rate"] for r in records])
    series["rows per dataset"] = {k: (x, [r.volumes.get(k, 0) for r in records]) for k in records[-1].volumes}
    return curves(series, path, title="flywheel rounds", log_y=False)


def summary_text(records: list[RoundRecord]) -> str:
    """A table for people: per round, held-out metrics of both models, accept rate, decision."""
    lines = ["round  accept  champion vIoU / F1   challenger vIoU / F1   decision"]
    for r in records:
        ch, cl = r.evaluation["champion"], r.evaluation["challenger"]
        lines.append(
            f"{r.round:>5}  {r.rankings['accept_rate']:6.2f}  {ch['viou']:.3f} / {ch['f1']:.3f}"
            f"          {cl['viou']:.3f} / {cl['f1']:.3f}            "
            f"{'promoted ' + r.challenger.uri if r.promotion.promote else 'kept'}"
        )
    return "\n".join(lines)
