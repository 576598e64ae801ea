"""Direct-regression reference: does the flow limit the bootstrap, or do the images?

Trains a plain discriminative learner on the same committed datasets as
``bench/bootstrap.py`` and scores it on the same held-out sets: the model's own condition
encoder (the ``tiny`` preset's trunk, ``--width`` times wider) over the object crop and the
full image, then the encoder stage's read-out (``sam3d_model.shape_readout``): an MLP, a 3-D
transposed-convolution head to 16³ occupancy logits trained with binary cross-entropy plus a
soft-IoU loss, and a 6D rotation trained with the model's symmetric rotation term
(``--rotation-weight``, default the model's). It answers one question only — how much shape
and rotation a direct learner reads from these images at these sizes — so it predicts no
translation or scale and takes no part in rounds.

Printed, all in one run: vIoU every ``--every`` steps on 256 training examples and the
real world's selection and reporting halves and the synthetic set (a learning curve:
nothing is chosen on it — the final scores are the last step's); then per seed the final
vIoU on each held-out set with the paired cluster-bootstrap 95% interval of its gain over
the constant shape fitted on the same training data, and the symmetry-aware rotation error
with the interval of its gain over the mean training pose, overall and per mesh family; with
``--seeds N``, the spread.

Usage: python bench/direct.py --store DIR --iso3do V --occlusions V --real V --synthetic V
       [--steps 1000] [--every 250] [--batch 32] [--lr 1e-3] [--width 1] [--seeds 1]
       [--rotation-weight W]
Writes bench/results/direct.json. ~4.5 min per seed of 1000 steps on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.datasets import Dataset  # noqa: E402
from flywheel.core.store import LocalStore  # noqa: E402
from flywheel.learning.examples import cached_examples  # noqa: E402
from flywheel.learning.heldout import HeldOut, Scores, family_report, load_heldout  # noqa: E402
from sam3d_model.baselines import ConstantShape  # noqa: E402
from sam3d_model.condition import TRUNKS  # noqa: E402
from sam3d_model.config import ModelConfig, preset  # noqa: E402
from sam3d_model.evaluation import paired_gains  # noqa: E402
from sam3d_model.geometry import matrix_from_rot6d, symmetric_rotation_loss  # noqa: E402
from sam3d_model.metrics import symmetric_rotation_error_deg, voxel_iou  # noqa: E402
from sam3d_model.shape_readout import ShapeReadout  # noqa: E402
from sam3d_model.shape_vae import occupancy_loss  # noqa: E402


class DirectRegressor(nn.Module):
    """crop, full (B, C_in, S, S) -> occupancy logits (B, R, R, R) and a 6D rotation (B, 6): the
    trunk and the read-out of the model's encoder pre-training (``sam3d_model.shape_readout``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = TRUNKS[cfg.encoder](cfg)
        self.readout = ShapeReadout(cfg, self.trunk.tokens)

    def forward(self, crop: torch.Tensor, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = crop.shape[0]
        features = self.trunk(torch.cat([crop, full]))  # both views share the trunk
        return self.readout(features[:b], features[b:])


def loss(
    net: DirectRegressor, batch: dict[str, torch.Tensor], rotation_weight: float, generator: torch.Generator
) -> torch.Tensor:
    logits, rot6d = net(batch["crop"], batch["full"])
    value = occupancy_loss(logits, batch["occupancy"])["loss"]
    if rotation_weight:
        turn = symmetric_rotation_loss(
            batch["occupancy"], matrix_from_rot6d(rot6d), batch["rotation"], generator=generator
        )
        value = value + rotation_weight * turn.mean()
    return value


def predict(net: DirectRegressor, examples: list[dict], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Boolean occupancy (n, R, R, R) at probability 0.5 and rotations (n, 3, 3)."""
    net.eval()
    shapes, turns = [], []
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            logits, rot6d = net(torch.stack([e["crop"] for e in chunk]), torch.stack([e["full"] for e in chunk]))
            shapes.append((logits > 0).numpy())
            turns.append(matrix_from_rot6d(rot6d).numpy())
    net.train()
    return np.concatenate(shapes), np.concatenate(turns)


def vious(pred: np.ndarray, examples: list[dict]) -> list[float]:
    return [voxel_iou(p, (e["occupancy"] > 0.5).numpy()) for p, e in zip(pred, examples, strict=True)]


def object_scores(shapes: np.ndarray, rotations: np.ndarray, heldout: HeldOut) -> list[dict[str, float]]:
    """Per held-out object: vIoU and the symmetry-aware rotation error (degrees)."""
    return [
        {"viou": v, "rotation_error_deg": symmetric_rotation_error_deg(R, t.pose[0], t.symmetries)}
        for v, R, t in zip(vious(shapes, heldout.examples), rotations, heldout.truths, strict=True)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="a local store folder")
    for name in ("iso3do", "occlusions", "real", "synthetic"):
        p.add_argument(f"--{name}", required=True, metavar="VERSION")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=250, help="learning-curve points every this many steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak of a one-cycle schedule")
    p.add_argument("--width", type=int, default=1, help="the trunk's channels times this")
    p.add_argument("--mask-error", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument(
        "--rotation-weight", type=float, default=None, help="of the symmetric rotation term (default: the model's)"
    )
    a = p.parse_args()

    store = LocalStore(a.store)
    cfg = preset("tiny")
    cfg = cfg.model_copy(update={"encoder_channels": tuple(c * a.width for c in cfg.encoder_channels)})
    rotation_weight = cfg.loss_weights.symmetric_rotation if a.rotation_weight is None else a.rotation_weight
    train = cached_examples(cfg, [Dataset(store, "iso3do", a.iso3do)]) + cached_examples(
        cfg, [Dataset(store, "occlusions", a.occlusions)]
    )
    real = Dataset(store, "occlusions", a.real)
    scored = {
        "selection": load_heldout(cfg, real, a.mask_error, "selection"),
        "reporting": load_heldout(cfg, real, a.mask_error, "reporting"),
        "synthetic": load_heldout(cfg, Dataset(store, "occlusions", a.synthetic)),
    }
    watched = {"train": train[:: max(1, len(train) // 256)][:256]} | {k: h.examples for k, h in scored.items()}
    baseline = ConstantShape.fit(train)  # the constant shape and the mean training pose
    constant = baseline.occupancy.numpy() > 0.5
    constant_scores = {
        k: object_scores(
            np.repeat(constant[None], len(h.examples), 0),
            np.repeat(baseline.rotation.numpy()[None], len(h.examples), 0),
            h,
        )
        for k, h in scored.items()
    }
    tensors = {k: torch.stack([e[k] for e in train]).float() for k in ("crop", "full", "occupancy", "rotation")}
    print(
        f"{len(train)} training examples; held-out: " + ", ".join(f"{k} {len(h.examples)}" for k, h in scored.items())
    )

    runs = []
    for seed in range(a.seeds):
        torch.manual_seed(seed)
        net = DirectRegressor(cfg)
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.steps, pct_start=max(0.05, 2 / a.steps))
        draw = torch.Generator().manual_seed(seed)
        curve, began = [], time.perf_counter()
        print(f"seed {seed}: mean vIoU at 0.5" + "".join(f"{k:>11}" for k in watched))
        for step in range(1, a.steps + 1):
            idx = torch.randint(len(train), (a.batch,), generator=draw)
            value = loss(net, {k: v[idx] for k, v in tensors.items()}, rotation_weight, draw)
            opt.zero_grad()
            value.backward()
            opt.step()
            schedule.step()
            if step % a.every == 0 or step == a.steps:
                row = {k: float(np.mean(vious(predict(net, ex)[0], ex))) for k, ex in watched.items()}
                curve.append({"step": step, **row})
                print(f"{'step ' + str(step):>28}" + "".join(f"{row[k]:>11.3f}" for k in watched), flush=True)
        final = {}
        for name, h in scored.items():
            objects = object_scores(*predict(net, h.examples), h)
            gains = paired_gains(constant_scores[name], objects, groups=h.mesh_ids)
            final[name] = {
                "viou": float(np.mean([o["viou"] for o in objects])),
                "gain": asdict(gains["viou"]),
                "rotation_error_deg": float(np.mean([o["rotation_error_deg"] for o in objects])),
                "rotation_gain": asdict(gains["rotation_error_deg"]),
                # per family: objects, and the direct learner's and the mean pose's rotation error
                "rotation_by_family": family_report(
                    {
                        "direct": Scores(mesh_ids=h.mesh_ids, objects=objects, families=h.families),
                        "mean_pose": Scores(mesh_ids=h.mesh_ids, objects=constant_scores[name], families=h.families),
                    },
                    "rotation_error_deg",
                ),
            }
            mean_pose = np.mean([o["rotation_error_deg"] for o in constant_scores[name]])
            print(
                f"  {name:>10}: vIoU {final[name]['viou']:.3f}, gain over the constant {gains['viou']}; "
                f"rotation {final[name]['rotation_error_deg']:.1f}° (mean pose {mean_pose:.1f}°), "
                f"gain {gains['rotation_error_deg']}"
            )
            print(
                "   "
                + "  ".join(
                    f"{f} {v['direct']:.0f}/{v['mean_pose']:.0f}°" for f, v in final[name]["rotation_by_family"].items()
                )
            )
        runs.append({"seed": seed, "curve": curve, "final": final, "seconds": time.perf_counter() - began})

    print(f"\nthe last step over {a.seeds} seed(s) (rotation: per family, direct / mean pose above):")
    for name, h in scored.items():
        for metric, base_name in (("viou", "constant"), ("rotation_error_deg", "mean pose")):
            values = [r["final"][name][metric] for r in runs]
            base = np.mean([o[metric] for o in constant_scores[name]])
            print(
                f"  {name:>10} ({len(h.examples)} objects) {metric}: {base_name} {base:.3f}, "
                f"direct mean {np.mean(values):.3f}, range {min(values):.3f} .. {max(values):.3f}"
            )
    out = Path(__file__).parent / "results" / "direct.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "runs": runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
