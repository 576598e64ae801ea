"""Evaluation benchmark: what one held-out object costs, full vs shortcut sampler, and how
wide the promotion gate's interval is at the default held-out size.

Measured in the same run, on toy held-out objects (flywheel.learning.toy) and the ``tiny``
preset briefly trained on the toy task (two training seeds = two "models" that differ only
by seed, as a champion and a challenger trained on the same data would):

* seconds per object of :func:`sam3d_model.evaluation.evaluate` with the guided default
  sampler (``sample_steps``, the baseline), with the 4-step shortcut sampler, split into
  sampling and scoring (the metrics), and with the consensus of ``rounds.eval_samples``
  samples (what rounds score), each as a ratio to the baseline;
* what ICP-Rot (:func:`sam3d_model.metrics.icp_rotation_error_deg`, the shape laid onto the
  truth's by ICP before the rotation error) adds to an object's scoring, as a share of the
  full sampler's sample + score;
* the exact point-to-surface distances behind F1 / Chamfer: the vectorised search
  (:func:`sam3d_model.metrics.distances_to_surface`) vs trimesh's R-tree search (the
  baseline), same points, same answers, and their ratio;
* the 95% interval width of the paired vIoU difference between the two seeds on half the
  held-out size (the selection half the gate reads), next to the difference itself: a gain
  smaller than this width cannot promote.

Usage: python bench/evaluation.py [--objects 64] [--steps 150]
Writes bench/results/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.config import RoundsConfig  # noqa: E402
from flywheel.learning.toy import toy_examples  # noqa: E402
from sam3d_model import train as T  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.data import batch_stream  # noqa: E402
from sam3d_model.evaluation import Truth, evaluate, paired_gains  # noqa: E402
from sam3d_model.metrics import (  # noqa: E402
    distances_to_surface,
    icp_rotation_error_deg,
    occupancy_to_mesh,
    surface_points,
)
from sam3d_model.model import SmallSam3D  # noqa: E402


def trained(cfg, examples, steps: int, seed: int) -> SmallSam3D:
    torch.manual_seed(seed)
    model = SmallSam3D(cfg)
    settings = T.TrainSettings(steps=steps, lr=1e-3, seed=seed, device="cpu", log_every=10**9)
    T.train_vae(model, batch_stream(lambda: examples, 16, seed), settings)
    T.pretrain(model, batch_stream(lambda: examples, 16, seed), settings)
    return model.eval()


def timed(model, examples, truths, **kw) -> tuple[dict, float]:
    start = time.perf_counter()
    result = evaluate(model, examples, seeds=1, truths=truths, **kw)
    return result, (time.perf_counter() - start) / len(examples)


def distance_costs(held, count: int = 1024) -> tuple[float, float, float]:
    """Seconds per object for F1's two distance queries, vectorised vs trimesh, and the largest
    difference between their answers."""
    pairs = []
    for i, e in enumerate(held):
        true = occupancy_to_mesh(e["occupancy"].numpy() > 0.5)
        other = occupancy_to_mesh(held[(i + 1) % len(held)]["occupancy"].numpy() > 0.5)
        pairs.append((true, surface_points(other, count, seed=i)))
    start = time.perf_counter()
    ours = [distances_to_surface(mesh, points) for mesh, points in pairs]
    ours_s = (time.perf_counter() - start) / len(held)
    start = time.perf_counter()
    theirs = [trimesh.proximity.closest_point(mesh, points)[1] for mesh, points in pairs]
    theirs_s = (time.perf_counter() - start) / len(held)
    return ours_s, theirs_s, max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))


def icp_cost(held, truths) -> float:
    """Seconds per object of ICP-Rot, each object's truth scored against the next one's shape."""
    shapes = [surface_points(occupancy_to_mesh(e["occupancy"].numpy() > 0.5), 512) for e in held]
    start = time.perf_counter()
    for i, t in enumerate(truths):
        icp_rotation_error_deg(np.eye(3), shapes[(i + 1) % len(held)], t.pose[0], t.points, t.symmetries)
    return (time.perf_counter() - start) / len(held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=64, help="held-out objects (default: the demo's 64)")
    parser.add_argument("--steps", type=int, default=150, help="training steps per stage of each toy model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    cfg = preset("tiny")
    train, held = toy_examples(cfg, 256), toy_examples(cfg, args.objects, start=10_000)

    start = time.perf_counter()
    truths = [Truth.of(e) for e in held]
    truth_s = (time.perf_counter() - start) / len(held)
    ours_s, trimesh_s, disagreement = distance_costs(held)
    icp_s = icp_cost(held, truths)
    a, b = trained(cfg, train, args.steps, 0), trained(cfg, train, args.steps, 1)
    full, full_s = timed(a, held, truths)
    fast, fast_s = timed(a, held, truths, shortcut=True)
    samples = RoundsConfig().eval_samples
    estimate, estimate_s = timed(a, held, truths, samples=samples)
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(held), 16):
            a.sample({k: torch.stack([e[k] for e in held[s : s + 16]]) for k in ("crop", "full", "full_valid")})
    sample_s = (time.perf_counter() - start) / len(held)
    other = evaluate(b, held, seeds=1, truths=truths)
    half = len(held) // 2
    interval = paired_gains(full["objects"][:half], other["objects"][:half])["viou"]
    result = {
        "objects": len(held),
        "truth_s_per_object": truth_s,
        "full_s_per_object": full_s,
        "shortcut_s_per_object": fast_s,
        "full_sampling_s_per_object": sample_s,
        "full_over_shortcut": full_s / fast_s,
        "consensus_samples": samples,
        "consensus_s_per_object": estimate_s,
        "consensus_over_full": estimate_s / full_s,
        "viou_consensus": estimate["summary"]["viou"],
        "icp_rotation_s_per_object": icp_s,
        "icp_rotation_share_of_full": icp_s / full_s,
        "distances_s_per_object": ours_s,
        "distances_trimesh_s_per_object": trimesh_s,
        "trimesh_over_vectorised": trimesh_s / ours_s,
        "distances_max_disagreement": disagreement,
        "viou_full": full["summary"]["viou"],
        "viou_shortcut": fast["summary"]["viou"],
        "selection_objects": half,
        "seed_difference_viou": interval.gain,
        "ci95_width_viou": interval.high - interval.low,
    }
    out = Path(__file__).parent / "results" / "evaluation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"held-out evaluation, tiny preset, {len(held)} toy objects, 1 sample each (CPU, 2 threads)")
    print(f"  ground truth (symmetries, diameter), once per set   {truth_s * 1000:7.1f} ms/object")
    print(f"  full sampler ({cfg.sample_steps} steps, guided): sample + score     {full_s * 1000:7.1f} ms/object")
    print(f"    of which sampling                                 {sample_s * 1000:7.1f} ms/object")
    print(
        f"  shortcut sampler (4 steps): sample + score          {fast_s * 1000:7.1f} ms/object"
        f"   -> full / shortcut = {result['full_over_shortcut']:.2f}x"
    )
    print(
        f"  consensus of {samples} full samples: sample + score         {estimate_s * 1000:7.1f} ms/object"
        f"   -> consensus / full = {result['consensus_over_full']:.2f}x"
    )
    print(
        f"  ICP-Rot (512 points each side)                      {icp_s * 1000:7.1f} ms/object"
        f"   -> {result['icp_rotation_share_of_full']:.0%} of the full sampler's sample + score"
    )
    print(
        f"  surface distances (1024 points): vectorised {ours_s * 1000:.1f} ms/object, trimesh {trimesh_s * 1000:.1f}"
        f" -> trimesh / vectorised = {result['trimesh_over_vectorised']:.1f}x (answers agree to {disagreement:.1e})"
    )
    print(
        f"  vIoU full {result['viou_full']:.3f} vs shortcut {result['viou_shortcut']:.3f} (shortcut not distilled here)"
        f" vs consensus {result['viou_consensus']:.3f}"
    )
    print(
        f"  two training seeds, same data, {half} objects (selection half): vIoU difference {interval}"
        f" -> 95% CI width {result['ci95_width_viou']:.3f}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
