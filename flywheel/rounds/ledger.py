"""The round ledger: what each closed flywheel round committed, in the store.

A *series* is a sequence of rounds run with one store and one set of the config sections
that shape them; its id is a digest of those (the store by its id, not its path: a state
folder moved or restored elsewhere keeps its series). Round ``k`` is committed when its record,
``rounds/<series>/round-<k>.json``, exists: the record is written last, atomically, so a
round killed anywhere before is simply not committed, and re-running it reuses its
finished tasks. Round ``k`` starts from the champion that round ``k-1`` ended with (round
0 from the model bootstrapped from synthetic data), never from the moving registry alias,
so a re-run of a round sees the same inputs as its first run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from flywheel.core.config import FlywheelConfig, shaping
from flywheel.core.digests import digest_of
from flywheel.core.leases import LeaseBusy, store_lease
from flywheel.core.store import Store, open_store
from flywheel.learning.heldout import Split
from flywheel.rounds.record import RoundRecord
from flywheel.tracking.plots import curves

log = logging.getLogger(__name__)


def series_id(cfg: FlywheelConfig) -> str:
    """A series is one store (:meth:`Store.identity`) and one shaping config
    (:func:`flywheel.core.config.shaping`)."""
    return digest_of(where_independent(cfg, shaping(cfg)))[:12]


def where_independent(cfg: FlywheelConfig, shaped: dict) -> dict:
    """``shaped`` (a :func:`shaping` of ``cfg``) with its store named by id instead of path."""
    return {**shaped, "store": open_store(cfg.store_root, cfg.store).identity()}


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


#: How often a round waiting for the lock says so.
LOCK_WAIT_REPORT_S = 30.0


@contextmanager
def round_lock(path: Path, wait_s: float, store: Store | None = None):
    """One round at a time for everything sharing this state folder: an exclusive ``flock`` on
    ``path``, which the kernel releases when its holder exits or is killed (no stale lock to
    clean up after a crash); and, given ``store``, for every machine sharing the store: its
    ``rounds`` lease (:mod:`flywheel.core.leases`). Waits up to ``wait_s`` in all, saying
    every 30 s who holds it, then raises :class:`RoundBusy` naming the holder."""
    started = time.monotonic()
    with _state_lock(path, wait_s), ExitStack() as held:
        if store is not None:
            left = max(0.0, wait_s - (time.monotonic() - started))

            def waiting(holder: str, waited: float) -> None:
                log.warning(
                    "waiting for the round lease of store %s, held by %s: %.0f s of at most %g s (rounds.lock_wait_s)",
                    store.root_uri,
                    holder,
                    waited,
                    left,
                )

            try:
                held.enter_context(
                    store_lease(store, "rounds", left, report_every_s=LOCK_WAIT_REPORT_S, on_wait=waiting)
                )
            except LeaseBusy as e:
                raise RoundBusy(
                    f"another flywheel round or synth is running on this store ({e}; rounds.lock_wait_s)"
                ) from None
        yield


@contextmanager
def _state_lock(path: Path, wait_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        started = time.monotonic()
        deadline, said = started + wait_s, -math.inf
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "holder unknown"
                now = time.monotonic()
                if now >= deadline:
                    raise RoundBusy(
                        f"another flywheel round or synth is running ({holder}; "
                        f"lock {path}); waited {wait_s:g} s (rounds.lock_wait_s)"
                    ) from None
                if now - said >= LOCK_WAIT_REPORT_S:  # people waiting see why, and keep seeing it
                    log.warning(
                        "waiting for the round lock %s, held by %s: %.0f s of at most %g s (rounds.lock_wait_s)",
                        path,
                        holder,
                        now - started,
                        wait_s,
                    )
                    said = now
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


WHO = ("champion", "challenger", "constant", "retrieval")
#: The metrics the table, the plot and the MLflow summary show first.
HEADLINE = ("viou", "f1", "chamfer", "rotation_error_deg", "icp_rotation_error_deg", "add_s_accuracy", "box_iou")


def summary_rows(records: list[RoundRecord]) -> list[dict]:
    """One flat row per round: held-out means (reporting half) of the models and baselines,
    the gains' intervals, best-of-N, decisions, data volumes, stage seconds."""
    rows = []
    for r in records:
        row: dict = {"round": r.round, "promoted": r.promotion.promote, "champion_after": r.champion_after.uri}
        for who, metrics in r.evaluation.items():
            row.update({f"{who}_{k}": v for k, v in metrics.items()})
        for split, report in r.heldout.items():
            for name, by_metric in report.intervals.items():
                for metric in HEADLINE:
                    if metric in by_metric:
                        gain, low, high = by_metric[metric]
                        row.update(
                            {
                                f"{split}_{name}_{metric}{end}": v
                                for end, v in (("", gain), ("_low", low), ("_high", high))
                            }
                        )
        if r.synthetic_heldout is not None:
            row.update(
                {f"synthetic_{who}_{m}": v for who, ms in r.synthetic_heldout.summary.items() for m, v in ms.items()}
            )
        row.update({f"best_of_n_{k}": v for k, v in r.best_of_n.items()})
        if r.seed_noise is not None:
            row["seed_noise_spread"] = r.seed_noise.spread
        for metric, families in (("viou", r.heldout_families), ("rotation_error_deg", r.heldout_families_rotation)):
            for family, by_who in families.items():
                row.update({f"family_{family}_{who}_{metric}": v for who, v in by_who.items() if who != "objects"})
        row.update(r.rankings)
        row.update({f"artists_{k}": v for k, v in r.artists.items()})
        row.update({f"rows_{k}": v for k, v in r.volumes.items()})
        row.update({f"seconds_{k}": v for k, v in r.seconds.items()})
        row["warnings"] = len(r.warnings)
        rows.append(row)
    return rows


def summary_plot(records: list[RoundRecord], path: str | Path) -> Path:
    """Held-out metrics of the models and baselines (reporting half), the challenger's gain
    over the champion with its 95% interval, best-of-N, accept rate and data volumes per round."""
    x = [r.round for r in records]
    series: dict = {}
    for metric in ("viou", "f1", "add_s_accuracy", "rotation_error_deg"):
        series[f"held-out {metric}"] = {
            who: (
                [r.round for r in records if who in r.evaluation],
                [r.evaluation[who][metric] for r in records if who in r.evaluation],
            )
            for who in WHO
            if any(who in r.evaluation for r in records)
        }
    with_intervals = [r for r in records if "selection" in r.heldout]
    if with_intervals:
        gains: dict[str, tuple] = {}
        comparisons: tuple[tuple[str, Split], ...] = (
            ("challenger-vs-champion", "selection"),
            ("champion-vs-constant", "reporting"),
            ("challenger-vs-constant", "reporting"),
        )
        for comparison, split in comparisons:
            have = [r for r in with_intervals if comparison in r.heldout[split].intervals]
            if have:
                gain, low, high = zip(*(r.heldout[split].intervals[comparison]["viou"] for r in have), strict=True)
                gains[f"{comparison} ({split})"] = ([r.round for r in have], gain, low, high)
        noise = [(r.round, r.seed_noise.spread) for r in with_intervals if r.seed_noise is not None]
        if noise:
            gains["training-seed noise (SFT)"] = ([k for k, _ in noise], [v for _, v in noise])
        series["vIoU gains, 95% intervals"] = gains
    if any(r.best_of_n for r in records):
        series["round candidates vIoU"] = {
            k: ([r.round for r in records if k in r.best_of_n], [r.best_of_n[k] for r in records if k in r.best_of_n])
            for k in ("oracle_viou", "model_viou", "retrieval_viou")
        }
    series["accept rate and yield"] = {
        "accept rate": (x, [r.rankings["accept_rate"] for r in records]),
        "yield": (x, [r.best_of_n.get("yield", float("nan")) for r in records]),
        "yield of random N (same proposals)": (x, [r.best_of_n.get("random_yield", float("nan")) for r in records]),
    }
    series["rows per dataset"] = {k: (x, [r.volumes.get(k, 0) for r in records]) for k in records[-1].volumes}
    return curves(series, path, title="flywheel rounds", log_y=False, reference={"vIoU gains, 95% intervals": 0.0})


def round_text(r: RoundRecord) -> str:
    """One round for people: held-out means of models and baselines, the gains with their
    intervals, best-of-N, the decision, and warnings in capitals."""
    lines = [f"round {r.round} (series {r.series}): {judgement_text(r)}"]
    if r.heldout:
        rep = r.heldout["reporting"]
        lines.append(f"held-out, reporting half ({rep.objects} objects, {rep.meshes} meshes):")
    else:
        lines.append("held-out:")
    widths = [max(len(m), 7) + 2 for m in HEADLINE]  # a column as wide as its name or a value
    lines.append(f"  {'':<11}" + "".join(f"{m:>{w}}" for m, w in zip(HEADLINE, widths)))
    for who, metrics in r.evaluation.items():
        values = (f"{metrics.get(m, float('nan')):>{w}.3f}" for m, w in zip(HEADLINE, widths))
        lines.append(f"  {who:<11}" + "".join(values))
    for split, report in r.heldout.items():
        for name in report.intervals:
            gains = report.gains(name)
            lines.append(f"  {name} ({split}): " + ", ".join(f"{m} {gains[m]}" for m in HEADLINE[:2] if m in gains))
    for title, families, places in (
        ("held-out vIoU by mesh family (both halves):", r.heldout_families, 3),
        (
            "held-out rotation error (degrees, symmetry-aware) by mesh family (both halves):",
            r.heldout_families_rotation,
            1,
        ),
    ):
        if families:
            lines.append(title)
            for family, by_who in families.items():
                cells = "  ".join(f"{who} {v:.{places}f}" for who, v in by_who.items() if who != "objects")
                lines.append(f"  {family:<14} ({int(by_who['objects'])} objects)  {cells}")
    if r.synthetic_heldout is not None:
        lines.append(world_gap_text(r))
    if r.best_of_n:
        b = r.best_of_n
        lines.append(
            f"round candidates vs truth (vIoU): oracle best-of-N {b.get('oracle_viou', float('nan')):.3f}, "
            f"model sample {b.get('model_viou', float('nan')):.3f}, retrieval {b.get('retrieval_viou', float('nan')):.3f}; "
            f"yield {b.get('yield', float('nan')):.2f} (objects with an acceptable candidate)"
        )
    if "shown_yield" in r.best_of_n:
        lines.append(search_text(r.best_of_n))
    if r.artists:
        lines.append(artists_text(r.artists))
    if r.seed_noise is not None:
        lines.append(f"training-seed noise: {r.seed_noise}")
    lines.append(
        f"decision: {'PROMOTED ' + r.challenger.uri if r.promotion.promote else 'kept the champion'} ({r.promotion.reason}); champion now {r.champion_after.uri}"
    )
    lines += [f"WARNING: {w}" for w in r.warnings]
    return "\n".join(lines)


def judgement_text(r: RoundRecord) -> str:
    """What the annotators made of the round's candidates: accept rate, hard cases, yield."""
    m = r.rankings
    text = (
        f"accept rate {m['accept_rate']:.2f} ({int(m.get('accepted', 0))} of {int(m.get('objects_judged', 0))} objects)"
    )
    if m.get("aligned"):
        text += f", {int(m['aligned'])} of them aligned to the photo"
    text += f", {int(m.get('hard_cases', 0))} hard cases"
    if "yield" in r.best_of_n:
        text += f", yield {r.best_of_n['yield']:.2f}"
    wins = {k.removeprefix("winners_"): int(v) for k, v in m.items() if k.startswith("winners_")}
    if wins:
        text += "; accepted winners by member: " + ", ".join(f"{k} {v}" for k, v in sorted(wins.items()))
    return text


def search_text(b: dict[str, float]) -> str:
    """Best-of-N search, one line: the candidates shown against N drawn at random from the same
    proposals (all objects, the hardest quarter), and the reward model that picked them."""
    nan = float("nan")
    if "reward_pairs" in b:
        head = (
            f"reward-guided best-of-N from {b.get('proposed_per_object', nan):.0f} proposals per object "
            f"(reward model: {int(b['reward_pairs'])} pairs, {int(b.get('reward_artist_pairs', 0))} from artists; "
            f"held-out pair accuracy {b.get('reward_heldout_accuracy', nan):.2f} on {int(b.get('reward_heldout_pairs', 0))})"
        )
    else:
        head = "unguided best-of-N (no reward model yet)"
    return (
        f"{head}: yield shown {b['shown_yield']:.2f} vs random N {b.get('random_yield', nan):.2f}, "
        f"oracle vIoU {b.get('shown_oracle_viou', nan):.3f} vs {b.get('random_oracle_viou', nan):.3f}; "
        f"hardest {int(b.get('hard_objects', 0))}: yield {b.get('hard_shown_yield', nan):.2f} vs "
        f"{b.get('hard_random_yield', nan):.2f}, vIoU {b.get('hard_shown_oracle_viou', nan):.3f} vs "
        f"{b.get('hard_random_oracle_viou', nan):.3f}"
    )


def artists_text(a: dict[str, float]) -> str:
    """The artist path of a round, one line."""
    return (
        f"artists: {int(a['queued'])} hard cases queued this round ({int(a['queued_total'])} so far), "
        f"{int(a['delivered'])} meshes delivered (Art-3DO), {int(a['pending'])} pending, "
        f"{int(a['refused_deliveries'])} deliveries refused; spend {a['spend']:.0f}"
    )


def world_gap_text(r: RoundRecord, metric: str = "viou") -> str:
    """The bootstrap champion on the synthetic world's held-out set and on the real world's."""
    assert r.synthetic_heldout is not None
    synthetic, real = r.synthetic_heldout, r.heldout["reporting"]
    parts = []
    for name, report in (("synthetic", synthetic), ("real", real)):
        gain = report.gains("champion-vs-constant").get(metric)
        parts.append(
            f"{name} {report.summary['champion'][metric]:.3f} (constant {report.summary['constant'][metric]:.3f}"
            + (f", gain {gain}" if gain else "")
            + f"; {report.objects} objects)"
        )
    return f"world gap, champion held-out {metric}: " + " vs ".join(parts)


def summary_text(records: list[RoundRecord]) -> str:
    """A table for people: per round, held-out vIoU of the models and baselines (reporting
    half), the challenger's gain with its interval (selection half), accept rate, yield of the
    candidates shown and of N drawn at random from the same proposals, decision."""
    lines = [
        "round  accept  yield (random N)  vIoU: champion  challenger  constant  retrieval   gain [95% CI] (selection)       decision"
    ]
    for r in records:
        v = {who: r.evaluation.get(who, {}).get("viou", float("nan")) for who in WHO}
        gain = (
            str(r.heldout["selection"].gains("challenger-vs-champion")["viou"])
            if "selection" in r.heldout
            else f"{r.promotion.gain:+.4f}"
        )
        lines.append(
            f"{r.round:>5}  {r.rankings['accept_rate']:6.2f}  {r.best_of_n.get('yield', float('nan')):5.2f} "
            f"({r.best_of_n.get('random_yield', float('nan')):4.2f})      {v['champion']:14.3f}  {v['challenger']:10.3f}"
            f"  {v['constant']:8.3f}  {v['retrieval']:9.3f}   {gain:<31} "
            f"{'promoted ' + r.challenger.uri if r.promotion.promote else 'kept'}{' (!)' if r.warnings else ''}"
        )
    if records and records[-1].warnings:
        lines += [f"WARNING (round {records[-1].round}): {w}" for w in records[-1].warnings]
    return "\n".join(lines)


def round_markdown(r: RoundRecord, links: dict[str, str], pictures: Sequence[tuple[str, str]] = ()) -> str:
    """The round as a page for the Prefect UI's Artifacts tab: the decision, held-out metrics
    of the models and baselines with the gains' intervals, what annotators made of the
    candidates, the data it made and read, warnings, ``links`` (label -> URL or URI) and
    ``pictures`` ((label, URL or path); the rounds' summary plot shown in the page when a
    URL)."""
    decision = f"PROMOTED `{r.challenger.uri}`" if r.promotion.promote else "kept the champion"
    lines = [
        f"# Round {r.round}: {decision}",
        "",
        f"{r.promotion.reason}",
        "",
        f"Series `{r.series}` · champion before `{r.champion_before.uri}` · challenger `{r.challenger.uri}`"
        f" · champion now `{r.champion_after.uri}`",
        "",
    ]
    lines += [f"> **WARNING** {w}" for w in r.warnings] + ([""] if r.warnings else [])
    rep = r.heldout.get("reporting")
    where = f"reporting half, {rep.objects} objects of {rep.meshes} meshes" if rep else "held-out"
    lines += [f"## Held-out ({where})", "", "| | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for who, metrics in r.evaluation.items():
        lines.append(f"| {who} | " + " | ".join(f"{metrics.get(m, float('nan')):.3f}" for m in HEADLINE) + " |")
    lines += ["", "| gain (95% interval) | half | viou | f1 |", "|---|---|---|---|"]
    for split, report in r.heldout.items():
        for name in report.intervals:
            gains = report.gains(name)
            lines.append(f"| {name} | {split} | {gains.get('viou', '')} | {gains.get('f1', '')} |")
    if r.synthetic_heldout is not None:
        lines += ["", world_gap_text(r)]
    if r.seed_noise is not None:
        lines += ["", f"Training-seed noise: {r.seed_noise}"]
    lines += ["", "## Annotation", "", judgement_text(r)]
    if r.artists:
        lines += ["", artists_text(r.artists)]
    lines += ["", "## Data", "", "| role | dataset | rows |", "|---|---|---|"]
    lines += [f"| {role} | `{ref}` | {ref.num_rows} |" for role, ref in r.datasets.items()]
    lines += ["", "## Time", "", ", ".join(f"{phase} {s:.0f} s" for phase, s in r.seconds.items())]
    if links:
        lines += ["", "## Links", ""] + [f"- {label}: {target}" for label, target in links.items()]
    if pictures:
        lines += ["", "## Pictures", ""]
        for label, target in pictures:
            if not target.startswith(("http://", "https://")):
                lines.append(f"- {label}: `{target}`")
            elif label.endswith("rounds_summary.png"):
                lines.append(f"- {label}:\n\n  ![{label}]({target})\n")
            else:
                lines.append(f"- [{label}]({target})")
    return "\n".join(lines) + "\n"


def evaluation_rows(r: RoundRecord) -> list[dict]:
    """The round's evaluation as table rows: one per model or baseline and held-out half,
    with each headline metric's mean."""
    halves = {split: report.summary for split, report in r.heldout.items()} or {"reporting": r.evaluation}
    rows = []
    for split, summary in halves.items():
        for who, metrics in summary.items():
            rows.append({"half": split, "model": who, **{m: round(metrics[m], 4) for m in HEADLINE if m in metrics}})
    return rows
