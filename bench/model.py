"""Model benchmark: training throughput per stage, and sampling speed and quality of the
guided default sampler (``sample_steps``, the baseline) vs the distilled 4-step shortcut sampler, measured in
the same run on the same held-out toy objects.

Trains the chosen preset on the toy task (flywheel.learning.toy: procedural shapes seen as
depth-shaded views): VAE, flow (SFT stage), shortcut distillation. Then, on held-out
objects, samples with both samplers from the same noise and reports samples/s, the speed
ratio, and vIoU / F1@0.01 against ground truth (the goal: >= 8x faster at <= 5% loss).
On CUDA it also reports the fraction of the GPU's peak bf16 FLOP/s reached in training.

Usage: python bench/model.py [--preset tiny] [--device auto] [--train 256] [--held-out 32]
Writes bench/results/model.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.learning.toy import toy_examples  # noqa: E402
from sam3d_model import train as T  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.data import batch_stream, collate  # noqa: E402
from sam3d_model.metrics import shape_metrics  # noqa: E402
from sam3d_model.model import SmallSam3D  # noqa: E402

# dense bf16 peak of known accelerators (FLOP/s), for the utilisation figure
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def quality(model: SmallSam3D, batch: dict, truth: list, **kw) -> dict[str, float]:
    pred = model.sample(batch, seed=11, **kw)
    scores = [shape_metrics(pred.item(i)["occupancy"], t) for i, t in enumerate(truth)]
    return {k: float(np.mean([s[k] for s in scores])) for k in ("viou", "f1")}


def samples_per_s(model: SmallSam3D, batch: dict, repeats: int, **kw) -> float:
    model.sample(batch, seed=0, **kw)  # warm-up
    if batch["crop"].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for r in range(repeats):
        model.sample(batch, seed=r, **kw)
    if batch["crop"].is_cuda:
        torch.cuda.synchronize()
    return repeats * batch["crop"].shape[0] / (time.perf_counter() - start)


def train_flops_per_step(model: SmallSam3D, batch: dict) -> float:
    """FLOPs of one flow training step (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.losses(batch, torch.Generator(device=batch["crop"].device).manual_seed(0))["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train", type=int, default=256, help="toy training objects")
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--flow-steps", type=int, default=1500)
    parser.add_argument("--distill-steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    device = T.resolve_device(args.device)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    train_set = toy_examples(cfg, args.train, seed=0)
    held = toy_examples(cfg, args.held_out, seed=1)  # other shapes, other poses
    batches = batch_stream(lambda: train_set, args.batch, seed=0)
    model = SmallSam3D(cfg)
    settings = dict(device=str(device), log_every=50)
    print(f"{args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}")

    stages = {}
    for name, fn, steps, lr in (("vae", T.train_vae, args.vae_steps, 3e-3), ("flow", T.sft, args.flow_steps, 1e-3)):
        result = fn(model, batches, T.TrainSettings(steps=steps, lr=lr, **settings))
        stages[name] = {
            "steps_per_s": steps / result.seconds,
            "samples_per_s": steps * args.batch / result.seconds,
            "final_loss": result.history[-1]["loss"],
        }
    student = copy.deepcopy(model)
    result = T.distill(
        student,
        batches,
        T.TrainSettings(steps=args.distill_steps, lr=5e-4, **settings),
        consistency_fraction=0.5,
        levels=2,
        teacher=T.frozen_copy(model),
    )
    stages["distill"] = {
        "steps_per_s": args.distill_steps / result.seconds,
        "samples_per_s": args.distill_steps * args.batch / result.seconds,
        "final_loss": result.history[-1]["loss"],
    }

    batch = {k: v.to(device) for k, v in collate(held).items()}
    truth = [e["occupancy"].numpy() > 0.5 for e in held]
    base = {"samples_per_s": samples_per_s(model, batch, args.repeats), **quality(model, batch, truth)}
    fast = {
        "samples_per_s": samples_per_s(student, batch, args.repeats, shortcut=True),
        **quality(student, batch, truth, shortcut=True),
    }
    naive = quality(model, batch, truth, steps=cfg.shortcut_steps, guidance=0.0)  # 4 steps, no distillation
    speedup = fast["samples_per_s"] / base["samples_per_s"]
    loss = {k: (base[k] - fast[k]) / max(base[k], 1e-9) for k in ("viou", "f1")}

    report = {
        "preset": args.preset,
        "device": str(device),
        "train_objects": args.train,
        "held_out_objects": args.held_out,
        "stages": stages,
        "sample_guided": base,
        "sample_4_step_shortcut": fast,
        "sample_4_step_undistilled": naive,
        "speedup": speedup,
        "relative_quality_loss": loss,
    }
    if device.type == "cuda":
        flops = train_flops_per_step(model, {k: v.to(device) for k, v in collate(train_set[: args.batch]).items()})
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        achieved = flops * stages["flow"]["steps_per_s"]
        report["gpu"] = {
            "name": name,
            "train_flops_per_step": flops,
            "achieved_flops": achieved,
            "fraction_of_peak_bf16": achieved / peak if peak else None,
        }

    print(f"\ntraining (batch {args.batch}):")
    for name, s in stages.items():
        print(
            f"  {name:8s} {s['steps_per_s']:7.2f} steps/s  {s['samples_per_s']:8.1f} samples/s  "
            f"final loss {s['final_loss']:.4f}"
        )
    print(f"\nsampling {args.held_out} held-out objects (vIoU / F1@0.01 vs ground truth):")
    print(
        f"  {cfg.sample_steps}-step + CFG (baseline)  {base['samples_per_s']:8.1f} samples/s  "
        f"vIoU {base['viou']:.3f}  F1 {base['f1']:.3f}"
    )
    print(
        f"  4-step shortcut           {fast['samples_per_s']:8.1f} samples/s  "
        f"vIoU {fast['viou']:.3f}  F1 {fast['f1']:.3f}"
    )
    print(f"  4-step, not distilled                         vIoU {naive['viou']:.3f}  F1 {naive['f1']:.3f}")
    print(
        f"\nshortcut / baseline speed: {speedup:.1f}x; relative quality loss: "
        f"vIoU {100 * loss['viou']:+.1f}%, F1 {100 * loss['f1']:+.1f}% (goal: >= 8x at <= 5%)"
    )
    if "gpu" in report:
        g = report["gpu"]
        frac = (
            "unknown peak"
            if g["fraction_of_peak_bf16"] is None
            else f"{100 * g['fraction_of_peak_bf16']:.1f}% of peak bf16"
        )
        print(f"GPU {g['name']}: {g['achieved_flops'] / 1e12:.2f} TFLOP/s in flow training ({frac})")
    out = Path(__file__).resolve().parent / "results" / "model.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
