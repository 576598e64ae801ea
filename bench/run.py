"""Benchmarks of the foundation, each printed as a figure and a ratio to a baseline measured
in the same run (machines are shared and noisy: compare ratios, not absolute numbers).

  store put/get throughput   local disk (baseline) vs SeaweedFS vs moto, on loopback
  webdataset read            samples/s streaming a committed dataset: local vs S3

Usage: python bench/run.py [--repeats 3] [--quick]
Results are also written to bench/results/foundation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.config import StoreConfig  # noqa: E402
from flywheel.core.contracts import SHAPES  # noqa: E402
from flywheel.core.datasets import Dataset, DatasetWriter, version_of  # noqa: E402
from flywheel.core.store import LocalStore, S3Store, Store  # noqa: E402
from flywheel.ops.servers import start_moto, start_seaweedfs  # noqa: E402
from rendering.procedural_shapes import shape_samples  # noqa: E402

KEY, SECRET, BUCKET = "bench-key", "bench-secret", "flywheel-bench"


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_store(store: Store, size: int, count: int, repeats: int) -> dict:
    payload = os.urandom(size)
    keys = [f"bench/{size}/{i:05d}" for i in range(count)]

    def put():
        for k in keys:
            store.put_bytes(k, payload)

    def get():
        for k in keys:
            assert len(store.get_bytes(k)) == size

    mib = size * count / 2**20
    t_put, t_get = timed(put, repeats), timed(get, repeats)
    store.delete(keys)
    return {"put_MiB_s": mib / t_put, "get_MiB_s": mib / t_get, "put_obj_s": count / t_put, "get_obj_s": count / t_get}


def bench_webdataset(store: Store, samples: int, resolution: int, repeats: int) -> dict:
    inputs = {"bench": samples, "res": resolution}
    version = version_of(SHAPES, inputs=inputs)
    start = time.perf_counter()
    with DatasetWriter(store, SHAPES, version, inputs=inputs, shard_max_samples=500) as w:
        for key, row, files in shape_samples(1, samples, resolution):
            w.add(key, row, files)
    write_s = time.perf_counter() - start
    ds = Dataset(store, "shapes", version)

    def read():
        n = sum(1 for _ in ds.samples())
        assert n == samples

    t = timed(read, repeats)
    mib = sum(s["bytes"] for s in ds.marker["shards"]) / 2**20
    return {"read_samples_s": samples / t, "read_MiB_s": mib / t, "write_incl_generate_s": write_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    small_n, large_n, wds_n = (50, 2, 500) if args.quick else (300, 8, 3000)

    os.environ.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET})
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    servers = []
    try:
        stores: dict[str, Store] = {"local": LocalStore(tmp / "local")}
        for name, start in (
            ("seaweedfs", lambda: start_seaweedfs(tmp / "weed", KEY, SECRET)),
            ("moto", lambda: start_moto(tmp / "moto")),
        ):
            server = start()
            servers.append(server)
            server.create_bucket(BUCKET)
            root = f"s3://{BUCKET}/bench"
            stores[name] = S3Store(root, StoreConfig(root=root, endpoint_url=server.endpoint_url))

        results: dict[str, dict] = {}
        for name, store in stores.items():
            print(f"[bench] {name} ...", flush=True)
            results[name] = {
                "small_64KiB": bench_store(store, 64 * 2**10, small_n, args.repeats),
                "large_8MiB": bench_store(store, 8 * 2**20, large_n, args.repeats),
                "webdataset_16cube": bench_webdataset(store, wds_n, 16, args.repeats),
            }
    finally:
        for server in servers:
            server.stop()

    base = results["local"]
    print(f"\nfoundation benchmark (median of {args.repeats}; ratio = backend / local, same run)")
    print(f"{'case':<34} {'local':>10} " + " ".join(f"{n:>10} {'ratio':>6}" for n in stores if n != "local"))
    for case, metrics in base.items():
        for metric, value in metrics.items():
            if metric.startswith("write"):
                continue
            row = f"{case + ' ' + metric:<34} {value:>10.1f} "
            for name in stores:
                if name != "local":
                    other = results[name][case][metric]
                    row += f"{other:>10.1f} {other / value:>6.2f} "
            print(row)
    out = Path(__file__).resolve().parent / "results" / "foundation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"repeats": args.repeats, "quick": args.quick, "results": results}, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
