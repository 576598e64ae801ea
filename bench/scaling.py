"""How each stage's cost grows with its work: 1x, 2x and 4x the work, as ratios to 1x
(2.0 and 4.0 are linear), and peak memory; training also at 10x the samples, streamed and
kept in memory, and on 1 and 2 Ray Train workers against the in-process path.

  iso3do      meshes rendered (3 views, 64 px, 4 spp: the demo's settings), one Blender worker
  occlusions  Flying Occlusions samples (128 px, 4 spp), one Blender worker
  candidates  objects x 4 candidates, tiny model, one proposal actor on Ray
  rankings    pairwise judgements ingested (read + checks) and aggregated (Bradley-Terry, decisions)
  validation  Iso-3DO manifest rows through their Great Expectations suites
  training    pre-training samples, one epoch streamed from the store (tiny model, batch 32)

Each measurement runs in a fresh process (`--measure STAGE SCALE`): its time is taken after
imports and a warm-up (Blender / Ray / Great Expectations start-up are not the stage's
work), its memory is that process's peak RSS ("driver"), and for the Blender stages the
Blender worker's own peak RSS (a child process). Ray actors are not children: their memory
is not in these figures.

Usage: python bench/scaling.py [--quick] [--stages iso3do training ...]
Writes bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

#: the work of each stage at 1x (full run, --quick)
UNITS = {
    "iso3do": ("meshes", 4, 2),
    "occlusions": ("samples", 4, 2),
    "candidates": ("objects", 8, 4),
    "rankings": ("rows", 200_000, 50_000),
    "validation": ("rows", 50_000, 10_000),
    "training": ("samples", 256, 128),
}
SCALES = (1, 2, 4)
BATCH = 32
#: Ray Train runs of these many steps: the difference is the steady rate, start-up excluded
RAY_STEPS = (20, 60)


def _peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


# -- one measurement per process ---------------------------------------------------------------


def _render(n: int, occlusions: bool, folder: Path) -> float:
    from synth import iso_jobs, meshes

    from rendering.workers import BlenderWorker

    paths = meshes(folder, max(n, 2) + 1)
    if occlusions:
        settings = dict(
            resolution=128, samples=4, fov_deg=50, visible_band=(0.3, 0.8), max_tries=30, min_occludee_pixels=50
        )
        jobs = [
            (
                "rendering.occlusions:occlusion_job",
                {
                    "occludee_mesh": paths[i % len(paths)],
                    "occluder_mesh": paths[(i + 1) % len(paths)],
                    "seed": i,
                    "out_dir": str(folder / f"fo{i}"),
                    **settings,
                },
            )
            for i in range(n + 1)
        ]
    else:
        jobs = [(j.fn, j.kwargs) for j in iso_jobs(paths, folder, 3, 64, 4)][: n + 1]
    with BlenderWorker(folder / "logs", cores=[0]) as worker:
        worker.run(*jobs[0], timeout=600)  # Blender start-up and the first render's warm-up
        start = time.perf_counter()
        done = [worker.run(fn, kwargs, timeout=600) for fn, kwargs in jobs[1:]]
        seconds = time.perf_counter() - start
    renders = sum(r["tries"] for r in done) if occlusions else sum(len(views) for views in done)
    assert len(done) == n and renders >= n * (1 if occlusions else 3), (len(done), renders)
    return seconds


def _candidates(n: int, folder: Path) -> float:
    import torch

    from flywheel.learning.serving import ProposalJob, ProposalPool
    from flywheel.learning.toy import toy_examples
    from sam3d_model.checkpoint import save_checkpoint
    from sam3d_model.config import preset
    from sam3d_model.data import collate
    from sam3d_model.ensemble import Member
    from sam3d_model.model import SmallSam3D

    cfg = preset("tiny")
    torch.manual_seed(0)
    examples = toy_examples(cfg, n)
    jobs = [
        ProposalJob(f"job-{i}", [f"obj-{j}" for j in range(i, min(i + 4, n))], collate(examples[i : i + 4]))
        for i in range(0, n, 4)
    ]
    checkpoint = str(save_checkpoint(folder / "model.pt", SmallSam3D(cfg)))
    members = (Member(name="champion", seeds=(0, 1, 2, 3)),)
    with ProposalPool({"champion": (checkpoint, "bench")}, members, num_candidates=4, actors=1) as pool:
        pool.run(jobs[:1])  # Ray, the actor and its model: outside the timing
        start = time.perf_counter()
        results = pool.run(jobs)
        seconds = time.perf_counter() - start
    assert all(r.ok for r in results)
    return seconds


def _rankings(n: int) -> float:
    from rankings import NOW, export

    from flywheel.feedback.aggregate import DecisionRules, decide
    from flywheel.feedback.exports import check, read_native

    data, registry = export(n, n // 10)
    annotators = {f"ann-{i}" for i in range(50)}
    start = time.perf_counter()
    good, quarantine = check(
        read_native(data, "bench.parquet"),
        "bench.parquet",
        candidates=registry,
        annotators=annotators,
        max_time_spent_s=3600,
        now=NOW,
    )
    decide(good, registry, DecisionRules(alpha=0.6))
    seconds = time.perf_counter() - start
    assert good.num_rows == n and quarantine.empty
    return seconds


def _validation(n: int) -> float:
    import pandas as pd
    from validation import VIEWS, _Spec, manifest

    from flywheel.core.config import ValidationConfig
    from flywheel.validation.suites import _common, iso3do_tables, run_suites

    rng = np.random.default_rng(0)
    cfg = ValidationConfig()

    def validate(m: pd.DataFrame, ids: list[str], name: str) -> None:
        tables = iso3do_tables(m, {"views": VIEWS}, ids, pd.DataFrame(), 0, cfg, _common(_Spec, m, "sample_key"))
        assert run_suites(name, "iso3do", tables).success

    validate(*manifest(VIEWS, rng), "iso3do@warm-up")  # Great Expectations' set-up
    m, ids = manifest(n, rng)
    start = time.perf_counter()
    validate(m, ids, "iso3do@bench")
    return time.perf_counter() - start


def iso3do_dataset(root: Path, n: int, resolution: int, image_size: int):
    """An Iso-3DO version of ``n`` generated samples (random boxes: the content does not
    change what reading and training cost)."""
    from flywheel.core.codecs import encode_npy, encode_png
    from flywheel.core.contracts import ISO3DO
    from flywheel.core.datasets import Dataset, write_dataset
    from flywheel.core.store import LocalStore

    rng = np.random.default_rng(n)
    K = [image_size * 1.07, 0, image_size / 2, 0, image_size * 1.07, image_size / 2, 0, 0, 1]

    def samples():
        for i in range(n):
            lo, hi = sorted(rng.integers(8, image_size - 8, 2))
            mask = np.zeros((image_size, image_size), np.uint8)
            mask[lo : hi + 4, lo : hi + 4] = 255
            rgba = np.dstack([rng.integers(0, 255, (image_size, image_size, 3), np.uint8), mask])
            depth = np.where(mask > 0, rng.uniform(2, 3), 0).astype(np.float32)
            occ = rng.uniform(size=(resolution,) * 3) < 0.3
            row = {
                "object_id": f"mesh-{i // 3:06d}",
                "view": i % 3,
                "width": image_size,
                "height": image_size,
                "K": K,
                "world_to_cam": np.eye(4).ravel().tolist(),
                "R": np.linalg.qr(rng.normal(size=(3, 3)))[0].ravel().tolist(),
                "t": [0.0, 0.0, 2.5],
                "s": 1.0,
                "mask_pixels": int((mask > 0).sum()),
                "num_lights": 2,
                "env_strength": 0.4,
                "samples": 4,
            }
            files = {
                "rgb.png": encode_png(rgba),
                "mask.png": encode_png(mask),
                "depth.npy": encode_npy(depth),
                "occ.npy": encode_npy(occ),
            }
            yield f"s{i:07d}", row, files

    store = LocalStore(root)
    ref = write_dataset(store, ISO3DO, f"bench-{n}", samples(), shard_max_samples=100)
    return Dataset(store, ref.name, ref.version)


def _training(n: int, folder: Path, cache_mb: int, workers: int, steps: int | None) -> tuple[float, int]:
    """Pre-training for one epoch of ``n`` samples (or ``steps``): (seconds, steps)."""
    import torch

    from flywheel.core.config import load_config
    from flywheel.learning.architecture import model_architecture
    from flywheel.learning.ray_train import run_stage_on_ray
    from flywheel.learning.stages import run_stage, stage_settings
    from sam3d_model.model import build_model

    torch.set_num_threads(1)  # what a Ray Train worker gets: the in-process baseline alike
    cfg = load_config(
        environ={
            "FLYWHEEL__STORE__ROOT": str(folder / "store"),
            "FLYWHEEL__MODEL__TRAIN_WORKERS": str(workers),
            "FLYWHEEL__MODEL__EXAMPLE_CACHE_MB": str(cache_mb),
            "FLYWHEEL__MODEL__DEVICE": "cpu",
        }
    )
    arch = model_architecture(cfg.model)
    dataset = iso3do_dataset(folder / "store", n, arch.resolution, arch.image_size)
    steps = steps or n // BATCH
    settings = {**stage_settings(cfg.model, "pretrain"), "steps": steps, "batch_size": BATCH}
    model = build_model(arch, settings["seed"])
    start = time.perf_counter()
    if workers:
        run_stage_on_ray(cfg, "pretrain", model, {"iso3do": [dataset.ref]}, settings, f"bench-{workers}-{n}")
    else:
        run_stage(
            "pretrain", model, {"iso3do": [dataset]}, settings, folder / "work", cache_mb=cfg.model.example_cache_mb
        )
    return time.perf_counter() - start, steps


def measure(stage: str, work: int, variant: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-scaling-") as tmp:
        return _measure(stage, work, variant, Path(tmp))


def _measure(stage: str, work: int, variant: str, folder: Path) -> dict:
    steps = None
    if stage in ("iso3do", "occlusions"):
        seconds = _render(work, stage == "occlusions", folder)
    elif stage == "candidates":
        seconds = _candidates(work, folder)
    elif stage == "rankings":
        seconds = _rankings(work)
    elif stage == "validation":
        seconds = _validation(work)
    else:  # training: "streamed" or "in-memory" (one epoch), "inproc:S" or "ray-N:S" (S steps, N workers)
        name, _, fixed = variant.partition(":")
        workers = int(name.split("-")[1]) if name.startswith("ray-") else 0
        seconds, steps = _training(work, folder, 0 if name == "streamed" else 4096, workers, int(fixed or 0) or None)
    return {
        "stage": stage,
        "work": work,
        "variant": variant,
        "seconds": seconds,
        "steps": steps,
        "driver_peak_mb": _peak_mb(),
        "children_peak_mb": _peak_mb(resource.RUSAGE_CHILDREN),
    }


# -- the run ------------------------------------------------------------------------------------


def run_one(stage: str, work: int, variant: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", stage, str(work), variant or "-"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if out.returncode:
        raise SystemExit(f"{stage} at {work}: the measurement failed\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"[bench] {stage:10s} {variant or '':9s} {work:>8,}: {result['seconds']:8.2f} s, driver peak "
        f"{result['driver_peak_mb']:6.0f} MB, children peak {result['children_peak_mb']:6.0f} MB",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller 1x work (a smoke run)")
    parser.add_argument("--stages", nargs="+", choices=list(UNITS), default=list(UNITS))
    parser.add_argument("--measure", nargs=3, metavar=("STAGE", "WORK", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        stage, work, variant = args.measure
        print(json.dumps(measure(stage, int(work), "" if variant == "-" else variant)))
        return
    print(f"[bench] {os.cpu_count()} cores; each figure from a fresh process", flush=True)
    results: dict = {"quick": args.quick, "at": datetime.now(UTC).isoformat(timespec="seconds"), "stages": {}}
    for stage in args.stages:
        unit, full, quick = UNITS[stage]
        base = quick if args.quick else full
        variant = "streamed" if stage == "training" else ""
        runs = [run_one(stage, base * k, variant) for k in SCALES]
        if stage == "training":  # memory as the data grows: streamed, and everything kept in memory
            runs.append(run_one(stage, base * 10, "streamed"))
            results["training_in_memory"] = [run_one(stage, base * k, "in-memory") for k in (1, 10)]
            results["ray_train"] = [
                run_one(stage, base, f"{v}:{steps}") for v in ("inproc", "ray-1", "ray-2") for steps in RAY_STEPS
            ]
        results["stages"][stage] = {"unit": unit, "runs": runs}

    print("\ncost at k x the work, as a ratio to 1x (linear: 2.00, 4.00); peak RSS (MB: Blender's, else the stage's)")
    for stage, r in results["stages"].items():
        runs = r["runs"]
        ratios = "  ".join(f"{x['work'] // runs[0]['work']}x {x['seconds'] / runs[0]['seconds']:5.2f}" for x in runs)
        # Blender stages: the Blender worker (a child); elsewhere a child is some library's fork
        blender = stage in ("iso3do", "occlusions")
        peaks = " / ".join(f"{x['children_peak_mb' if blender else 'driver_peak_mb']:.0f}" for x in runs)
        print(f"  {stage:10s} ({runs[0]['work']:,} {r['unit']} at 1x): {ratios}   peak {peaks}")
    if "training_in_memory" in results:
        streamed = results["stages"]["training"]["runs"]
        kept = results["training_in_memory"]
        print(
            f"  training memory, 1x -> 10x samples: streamed {streamed[0]['driver_peak_mb']:.0f} -> "
            f"{streamed[-1]['driver_peak_mb']:.0f} MB; kept in memory {kept[0]['driver_peak_mb']:.0f} -> "
            f"{kept[-1]['driver_peak_mb']:.0f} MB"
        )
        runs = {x["variant"]: x for x in results["ray_train"]}
        short, long = RAY_STEPS
        print(
            f"  training, {BATCH} samples a step, in-process (1 thread) vs Ray Train workers on {os.cpu_count()} cores:"
        )
        base_rate = None
        for who in ("inproc", "ray-1", "ray-2"):
            a, b = runs[f"{who}:{short}"], runs[f"{who}:{long}"]
            rate = (long - short) * BATCH / (b["seconds"] - a["seconds"])  # start-up cancels out
            startup = a["seconds"] - short * BATCH / rate
            base_rate = base_rate or rate
            print(
                f"    {who:7s} {rate:6.1f} samples/s (x{rate / base_rate:.2f}), start-up {startup:5.1f} s, "
                f"wall for {short} steps {a['seconds']:.1f} s"
            )
    out = BENCH / "results" / "scaling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
