"""Precision benchmark: would bf16 autocast speed up training on this machine's CPU?

`sam3d_model.train.fit` uses bf16 autocast on CUDA only. Some CPUs have bf16 matrix units
(Intel AMX), so this times the round's two most expensive kinds of training step on the toy
task — an image-encoder pre-training step (`pretrain_encoder`: the trunk, the shape readout,
the rotation term) and a flow step (`midtrain`: every layout term) — in float32 (the
baseline) and with each step's loss wrapped in CPU bf16 autocast, alternating the two
`--repeats` times in the same run, and prints the time per step and the ratio
float32 / bf16 (above 1: bf16 is faster).

Usage: python bench/precision.py [--preset tiny] [--steps 20] [--repeats 2]
Writes bench/results/precision.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.learning.toy import toy_examples  # noqa: E402
from sam3d_model import train as T  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.data import batch_stream  # noqa: E402
from sam3d_model.model import SmallSam3D  # noqa: E402


@contextlib.contextmanager
def cpu_bf16():
    """Every stage's loss under CPU bf16 autocast, as ``fit`` puts it under CUDA's."""
    fit = T.fit

    def fit_bf16(stage, model, parameters, loss_fn, *args, **kwargs):
        def loss_bf16(batch, generator):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return loss_fn(batch, generator)

        return fit(stage, model, parameters, loss_bf16, *args, **kwargs)

    T.fit = fit_bf16
    try:
        yield
    finally:
        T.fit = fit


def seconds_per_step(stage, cfg, examples, batch: int, steps: int, bf16: bool) -> float:
    model = SmallSam3D(cfg)
    settings = T.TrainSettings(steps=steps, lr=3e-4, log_every=steps)
    with cpu_bf16() if bf16 else contextlib.nullcontext():
        start = time.perf_counter()
        stage(model, batch_stream(lambda: examples, batch, seed=0), settings)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = preset(args.preset)
    examples = toy_examples(cfg, 64, seed=0)
    # the round's batch sizes: 32 for the encoder, 16 for the flow (flywheel.core.config)
    stages = {"encoder": (T.pretrain_encoder, 32), "flow": (T.midtrain, 16)}
    report = {"preset": args.preset, "threads": torch.get_num_threads(), "stages": {}}
    for name, (stage, batch) in stages.items():
        times: dict[str, list[float]] = {"float32": [], "bf16": []}
        seconds_per_step(stage, cfg, examples, batch, 3, False)  # warm-up: allocator, kernels
        for _ in range(args.repeats):
            for kind in times:
                times[kind].append(seconds_per_step(stage, cfg, examples, batch, args.steps, kind == "bf16"))
        best = {k: min(v) for k, v in times.items()}
        ratio = best["float32"] / best["bf16"]
        report["stages"][name] = {**{f"{k}_ms_per_step": 1000 * v for k, v in best.items()}, "ratio": ratio}
        print(
            f"{name:8s} batch {batch}: float32 {1000 * best['float32']:.0f} ms/step, "
            f"bf16 {1000 * best['bf16']:.0f} ms/step, float32/bf16 {ratio:.2f}x"
        )
    out = Path(__file__).resolve().parent / "results" / "precision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
