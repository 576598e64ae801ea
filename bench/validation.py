"""Validation time for 100k and 1M manifest rows (Iso-3DO manifest suite: 30+ expectations
incl. derived rotation errors, compound uniqueness, referential integrity, views per
object). Prints seconds, rows/s and the 1M / 100k time ratio measured in the same run.

Usage: python bench/validation.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.config import ValidationConfig  # noqa: E402
from flywheel.core.contracts import ISO3DO  # noqa: E402
from flywheel.validation.suites import _common, iso3do_tables, run_suites  # noqa: E402

VIEWS = 24


def manifest(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, list[str]]:
    objects = -(-rows // VIEWS)
    rows = objects * VIEWS  # whole objects (24 views each)
    mesh_ids = [f"mesh-{i:016x}" for i in range(objects)]
    q, _ = np.linalg.qr(rng.normal(size=(objects, 3, 3)))
    R = np.repeat(q, VIEWS, axis=0).reshape(-1, 9)
    t = np.c_[rng.normal(size=(rows, 2)) * 0.1, rng.uniform(2, 3, rows)]
    m = pd.DataFrame(
        {
            "sample_key": [f"{mesh_ids[i // VIEWS]}-v{i % VIEWS:03d}" for i in range(rows)],
            "shard": [f"shard-{i // 1000:06d}.tar" for i in range(rows)],
            "sample_bytes": 4096,
            "sample_sha256": "0" * 64,
            "object_id": np.repeat(mesh_ids, VIEWS),
            "view": np.tile(np.arange(VIEWS), objects),
            "width": 128,
            "height": 128,
            "K": [[137.0, 0, 64, 0, 137.0, 64, 0, 0, 1]] * rows,
            "world_to_cam": [[0.0] * 16] * rows,
            "R": list(R),
            "t": list(t),
            "s": 1.0,
            "mask_pixels": rng.integers(100, 5000, rows),
            "num_lights": 2,
            "env_strength": 0.4,
            "samples": 16,
        }
    )
    return m, mesh_ids


class _Spec:  # what _common needs of a dataset: its contract
    spec = ISO3DO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cfg = ValidationConfig()
    results = {}
    warm, ids = manifest(VIEWS, rng)  # import and set up Great Expectations outside the timing
    run_suites(
        "iso3do@warm-up",
        "iso3do",
        iso3do_tables(warm, {"views": VIEWS}, ids, pd.DataFrame(), 0, cfg, _common(_Spec, warm, "sample_key")),
    )
    for rows in args.sizes:
        m, mesh_ids = manifest(rows, rng)
        start = time.perf_counter()
        tables = iso3do_tables(
            m, {"views": VIEWS, "resolution": 128}, mesh_ids, pd.DataFrame(), 0, cfg, _common(_Spec, m, "sample_key")
        )
        report = run_suites(f"iso3do@bench-{rows}", "iso3do", tables)
        seconds = time.perf_counter() - start
        assert report.success, report.summary()
        results[rows] = {"seconds": seconds, "rows_per_s": rows / seconds, "expectations": report.evaluated}
        print(
            f"[bench] {rows:>9,} rows: {seconds:6.2f} s, {rows / seconds:,.0f} rows/s, {report.evaluated} expectations",
            flush=True,
        )
    if len(args.sizes) >= 2:
        a, b = args.sizes[0], args.sizes[-1]
        print(
            f"time ratio {b:,} / {a:,} rows = {results[b]['seconds'] / results[a]['seconds']:.2f} "
            f"(rows ratio {b / a:.0f})"
        )
    out = Path(__file__).resolve().parent / "results" / "validation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
