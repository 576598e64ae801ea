"""Benchmarks of the synthetic-data renderer, as ratios to a baseline measured in the same run.

  1. persistent worker overhead   wall time / summed pure Cycles time, 24-view objects (goal <= 1.05)
  2. Flying Occlusions            samples/s, persistent worker vs a fresh Blender process per
                                  render (the one-`blender -b`-call-per-image pattern) (goal >= 4x)
  3. scaling                      Iso-3DO objects/s with 2 workers vs 1 (Ray actor pool)

Usage: python bench/synth.py [--quick]       Results also go to bench/results/synth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rendering.iso3do import iso3do_scene  # noqa: E402
from rendering.meshes import clean, procedural_mesh  # noqa: E402
from rendering.occlusions import occlusion_job  # noqa: E402
from rendering.pool import Job, RenderPool  # noqa: E402
from rendering.scene import Scene  # noqa: E402
from rendering.workers import BlenderWorker  # noqa: E402


def meshes(folder: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = folder / f"mesh{i}.npz"
        path.write_bytes(clean(procedural_mesh(7, i)[0]).to_npz())
        paths.append(str(path))
    return paths


def iso_jobs(paths, folder: Path, views: int, res: int, samples: int) -> list[Job]:
    return [
        Job(
            f"obj{i}",
            "rendering.iso3do:render_job",
            {
                "scene": iso3do_scene(
                    p,
                    np.random.default_rng(i),
                    views=views,
                    resolution=res,
                    samples=samples,
                    fov_deg=40,
                    camera_distance=2.7,
                ).to_dict(),
                "out_dir": str(folder / f"iso{i}"),
            },
        )
        for i, p in enumerate(paths)
    ]


def bench_overhead(paths, folder, views, res, samples) -> dict:
    jobs = iso_jobs(paths, folder, views, res, samples)
    with BlenderWorker(folder / "logs", cores=[0]) as worker:
        worker.run(jobs[0].fn, jobs[0].kwargs, timeout=600)  # start-up and first-render warm-up
        start = time.perf_counter()
        render_s = 0.0
        for job in jobs:
            render_s += sum(v["render_s"] for v in worker.run(job.fn, job.kwargs, timeout=600))
        wall = time.perf_counter() - start
    return {
        "objects": len(jobs),
        "views": views,
        "wall_s": wall,
        "pure_render_s": render_s,
        "ratio_wall_to_render": wall / render_s,
    }


class FreshProcessRenderer:
    """Baseline: every render in a new Blender process (import bpy, reset, render, exit)."""

    def __init__(self, log_dir):
        self.log_dir, self.renders = log_dir, 0

    def __call__(self, scene: Scene, out_dir: str) -> list[dict]:
        self.renders += 1
        with BlenderWorker(self.log_dir, cores=[0]) as worker:
            return worker.run(
                "rendering.iso3do:render_job", {"scene": scene.to_dict(), "out_dir": out_dir}, timeout=600
            )


def bench_occlusions(paths, folder, n: int, res: int, samples: int) -> dict:
    settings = dict(
        resolution=res, samples=samples, fov_deg=50, visible_band=(0.3, 0.8), max_tries=30, min_occludee_pixels=50
    )
    pairs = [(paths[i % len(paths)], paths[(i + 1) % len(paths)]) for i in range(n)]
    with BlenderWorker(folder / "logs", cores=[0]) as worker:
        worker.run(
            "rendering.occlusions:occlusion_job",
            {
                "occludee_mesh": pairs[0][0],
                "occluder_mesh": pairs[0][1],
                "seed": 999,
                "out_dir": str(folder / "warm"),
                **settings,
            },
            timeout=600,
        )
        start = time.perf_counter()
        persistent = [
            worker.run(
                "rendering.occlusions:occlusion_job",
                {"occludee_mesh": a, "occluder_mesh": b, "seed": i, "out_dir": str(folder / f"fo{i}"), **settings},
                timeout=600,
            )
            for i, (a, b) in enumerate(pairs)
        ]
        persistent_s = time.perf_counter() - start
    fresh = FreshProcessRenderer(folder / "logs")
    start = time.perf_counter()
    baseline = [
        occlusion_job(a, b, i, str(folder / f"fresh{i}"), render=fresh, **settings) for i, (a, b) in enumerate(pairs)
    ]
    fresh_s = time.perf_counter() - start
    assert [r["tries"] for r in baseline] == [r["tries"] for r in persistent]  # same work done
    return {
        "samples": n,
        "renders_per_sample": fresh.renders / n,
        "persistent_samples_s": n / persistent_s,
        "fresh_process_samples_s": n / fresh_s,
        "speedup": fresh_s / persistent_s,
    }


def bench_scaling(paths, folder, views, res, samples) -> dict:
    out = {}
    for workers in (1, 2):
        jobs = iso_jobs(paths, folder / f"w{workers}", views, res, samples)
        with RenderPool(workers, str(folder / "logs")) as pool:
            pool.run(jobs[:workers])  # start the workers (Ray actors + Blender) outside the timing
            start = time.perf_counter()
            results = pool.run(jobs)
            elapsed = time.perf_counter() - start
        assert all(r.ok for r in results)
        out[f"{workers}_worker_objects_s"] = len(jobs) / elapsed
    out["ratio_2_vs_1"] = out["2_worker_objects_s"] / out["1_worker_objects_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer objects and samples (a smoke run)")
    args = parser.parse_args()
    n_obj, n_fo, res = (2, 2, 64) if args.quick else (4, 4, 128)
    folder = Path(tempfile.mkdtemp(prefix="flywheel-bench-synth-"))
    paths = meshes(folder, max(n_obj, 2))
    print(f"[bench] cores: {os.cpu_count()}; Iso-3DO {n_obj} objects x 24 views at {res}^2, 16 spp", flush=True)
    results = {"overhead": bench_overhead(paths[:n_obj], folder, 24, res, 16)}
    print(f"[bench] 1 done: {results['overhead']}", flush=True)
    results["occlusions"] = bench_occlusions(paths, folder, n_fo, res, 16)
    print(f"[bench] 2 done: {results['occlusions']}", flush=True)
    results["scaling"] = bench_scaling(paths[:n_obj], folder, 24, res // 2 if args.quick else 96, 16)
    print(f"[bench] 3 done: {results['scaling']}", flush=True)

    o, f, s = results["overhead"], results["occlusions"], results["scaling"]
    print("\nsynthetic-data benchmark (ratios measured in this run)")
    print(
        f"1. persistent worker: wall {o['wall_s']:.2f} s / pure Cycles {o['pure_render_s']:.2f} s "
        f"= {o['ratio_wall_to_render']:.3f}   (goal <= 1.05)"
    )
    print(
        f"2. Flying Occlusions: {f['persistent_samples_s']:.3f} vs {f['fresh_process_samples_s']:.3f} samples/s "
        f"(fresh process per render, {f['renders_per_sample']:.1f} renders/sample) = {f['speedup']:.2f}x   (goal >= 4x)"
    )
    print(
        f"3. scaling: {s['1_worker_objects_s']:.3f} -> {s['2_worker_objects_s']:.3f} objects/s "
        f"= {s['ratio_2_vs_1']:.2f}x with 2 workers vs 1"
    )
    out = Path(__file__).resolve().parent / "results" / "synth.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, **results}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
