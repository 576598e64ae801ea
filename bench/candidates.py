"""Candidate throughput on Ray: candidates/s with 1 vs 2 proposal actors, and with the
guided default sampler (``sample_steps``) vs the 4-step shortcut sampler, measured in the same run on the
same objects (the 1-actor, guided figure is the baseline of the ratios).

The model is the chosen preset with fresh weights: speed does not depend on training.
Each actor reserves a fractional CPU; on 2 cores, 2 actors can at best double throughput.

Usage: python bench/candidates.py [--preset tiny] [--objects 16] [--candidates 8]
Writes bench/results/candidates.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.learning.serving import ProposalJob, ProposalPool  # noqa: E402
from flywheel.learning.toy import toy_examples  # noqa: E402
from sam3d_model.checkpoint import save_checkpoint  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.data import collate  # noqa: E402
from sam3d_model.ensemble import Member  # noqa: E402
from sam3d_model.model import SmallSam3D  # noqa: E402


def measure(checkpoint: str, members: tuple, jobs: list, n: int, actors: int) -> float:
    with ProposalPool({"champion": (checkpoint, "bench")}, members, num_candidates=n, actors=actors) as pool:
        pool.run(jobs[:actors])  # load the models, warm up
        start = time.perf_counter()
        results = pool.run(jobs)
        seconds = time.perf_counter() - start
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    return sum(len(c) for r in results for c in r.candidates.values()) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--objects-per-job", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = preset(args.preset)
    torch.manual_seed(0)
    examples = toy_examples(cfg, args.objects)
    jobs = [
        ProposalJob(
            f"job-{i}",
            [f"obj-{j}" for j in range(i, min(i + args.objects_per_job, args.objects))],
            collate(examples[i : i + args.objects_per_job]),
        )
        for i in range(0, args.objects, args.objects_per_job)
    ]
    seeds = tuple(range(args.candidates))
    samplers = {
        "guided": (Member(name="champion", seeds=seeds),),
        "4-step shortcut": (Member(name="champion", seeds=seeds, shortcut=True),),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(save_checkpoint(Path(tmp) / "model.pt", SmallSam3D(cfg)))
        for sampler, members in samplers.items():
            for actors in (1, 2):
                rate = measure(checkpoint, members, jobs, args.candidates, actors)
                results[f"{sampler}, {actors} actor{'s' if actors > 1 else ''}"] = rate
                print(f"{sampler:16s} {actors} actor(s): {rate:8.1f} candidates/s", flush=True)
    base = results["guided, 1 actor"]
    print(
        f"\n{args.objects} objects x {args.candidates} candidates, {args.preset} model; ratios to the guided sampler on 1 actor:"
    )
    for name, rate in results.items():
        print(f"  {name:28s} {rate:8.1f} candidates/s  x{rate / base:.2f}")
    out = Path(__file__).resolve().parent / "results" / "candidates.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "preset": args.preset,
                "objects": args.objects,
                "candidates": args.candidates,
                "candidates_per_s": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
