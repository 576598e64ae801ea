"""Rankings at scale: 1M pairwise judgements over 100k objects (8 candidates each),
ingested (read + every check of flywheel.feedback.exports) and aggregated (Bradley-Terry per
object with choix, decisions), against a naive baseline that checks row by row in Python
and fits each object with iterative ILSR, measured in the same run on a sample. Then the
next, cumulative export (Label Studio exports everything so far: the 1M rows again plus
10% new ones) checked against what was ingested.

Usage: python bench/rankings.py [--rows 1000000] [--objects 100000] [--baseline-rows 20000]
Writes bench/results/rankings.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import choix
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.feedback.aggregate import DecisionRules, decide  # noqa: E402
from flywheel.feedback.exports import check, read_native, resubmissions  # noqa: E402

CANDIDATES = 8
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def export(rows: int, objects: int, seed: int = 0) -> tuple[bytes, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    obj = rng.integers(0, objects, rows)
    a = rng.integers(0, CANDIDATES, rows)
    b = (a + rng.integers(1, CANDIDATES, rows)) % CANDIDATES
    cid = lambda o, c: np.char.add(np.char.add("c", o.astype(str)), np.char.add("-", c.astype(str)))  # noqa: E731
    table = pa.table(
        {
            "submission_id": np.char.add("s", np.arange(rows).astype(str)),
            "annotator_id": np.char.add("ann-", rng.integers(0, 50, rows).astype(str)),
            "object_id": np.char.add("o", obj.astype(str)),
            "kind": np.full(rows, "pairwise"),
            "winner": cid(obj, a),
            "losers": pa.array([[x] for x in cid(obj, b)], pa.list_(pa.string())),
            "timestamp": pa.array(
                np.full(rows, np.datetime64("2026-11-01T00:00:00", "us")), pa.timestamp("us", tz="UTC")
            ),
            "time_spent_s": rng.uniform(3, 90, rows),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    registry = pd.DataFrame(
        {
            "candidate_id": cid(np.repeat(np.arange(objects), CANDIDATES), np.tile(np.arange(CANDIDATES), objects)),
            "object_id": np.char.add("o", np.repeat(np.arange(objects), CANDIDATES).astype(str)),
        }
    )
    return buf.getvalue(), registry


def naive(data: bytes, registry: pd.DataFrame, annotators: set) -> int:
    """Row by row: a dict per row, Python checks, then ILSR per object."""
    owner = dict(zip(registry["candidate_id"], registry["object_id"]))
    per_object: dict[str, list] = {}
    for r in pq.read_table(io.BytesIO(data)).to_pylist():
        if (
            r["annotator_id"] not in annotators
            or owner.get(r["winner"]) != r["object_id"]
            or any(owner.get(x) != r["object_id"] for x in r["losers"])
            or r["winner"] in r["losers"]
            or not 0 < r["time_spent_s"] <= 3600
            or r["timestamp"] > NOW
        ):
            continue
        per_object.setdefault(r["object_id"], []).append((r["winner"], r["losers"][0]))
    for pairs in per_object.values():
        items = sorted({x for p in pairs for x in p})
        index = {c: i for i, c in enumerate(items)}
        choix.ilsr_pairwise(len(items), [(index[w], index[lo]) for w, lo in pairs], alpha=0.1)
    return len(per_object)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=20_000)
    args = parser.parse_args()
    annotators = {f"ann-{i}" for i in range(50)}
    data, registry = export(args.rows, args.objects)
    t0 = time.perf_counter()
    raw = read_native(data, "bench.parquet")
    t1 = time.perf_counter()
    good, quarantine = check(
        raw, "bench.parquet", candidates=registry, annotators=annotators, max_time_spent_s=3600, now=NOW
    )
    t2 = time.perf_counter()
    decisions, _ = decide(good, registry, DecisionRules(alpha=0.6))
    t3 = time.perf_counter()
    total = t3 - t0
    print(
        f"{args.rows:,} rows over {args.objects:,} objects: read {t1 - t0:.2f} s, check {t2 - t1:.2f} s, "
        f"aggregate {t3 - t2:.2f} s; total {total:.2f} s ({args.rows / total:,.0f} rows/s; goal <= 10 s)"
    )
    assert good.num_rows == args.rows and quarantine.empty

    more, _ = export(args.rows // 10, args.objects, seed=1)
    extra = pq.read_table(io.BytesIO(more))
    extra = extra.set_column(0, "submission_id", pc.binary_join_element_wise("n", extra["submission_id"], ""))
    buf = io.BytesIO()
    pq.write_table(pa.concat_tables([pq.read_table(io.BytesIO(data)), extra]), buf)
    t4 = time.perf_counter()
    again, _ = check(
        read_native(buf.getvalue(), "next.parquet"),
        "next.parquet",
        candidates=registry,
        annotators=annotators,
        max_time_spent_s=3600,
        now=NOW,
    )
    duplicate, conflicting = resubmissions(again, good)
    cumulative = time.perf_counter() - t4
    assert int(duplicate.sum()) == args.rows and not conflicting.any()
    print(
        f"next cumulative export ({again.num_rows:,} rows, {args.rows:,} already ingested): read + check + "
        f"resubmissions {cumulative:.2f} s"
    )

    small, small_registry = export(args.baseline_rows, max(1, args.objects * args.baseline_rows // args.rows))
    t = time.perf_counter()
    naive(small, small_registry, annotators)
    naive_rate = args.baseline_rows / (time.perf_counter() - t)
    t = time.perf_counter()
    g, _ = check(
        read_native(small, "b.parquet"),
        "b.parquet",
        candidates=small_registry,
        annotators=annotators,
        max_time_spent_s=3600,
        now=NOW,
    )
    decide(g, small_registry, DecisionRules(alpha=0.6))
    fast_rate = args.baseline_rows / (time.perf_counter() - t)
    print(
        f"on {args.baseline_rows:,} rows: row-by-row {naive_rate:,.0f} rows/s, vectorised {fast_rate:,.0f} rows/s "
        f"(x{fast_rate / naive_rate:.1f}); at full size vectorised {args.rows / total:,.0f} rows/s "
        f"= x{args.rows / total / naive_rate:.1f} the baseline's rate"
    )
    out = Path(__file__).resolve().parent / "results" / "rankings.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "objects": args.objects,
                "read_s": t1 - t0,
                "check_s": t2 - t1,
                "aggregate_s": t3 - t2,
                "total_s": total,
                "cumulative_export_s": cumulative,
                "naive_rows_per_s": naive_rate,
                "vectorised_rows_per_s_small": fast_rate,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
