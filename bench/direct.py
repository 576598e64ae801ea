"""Direct-regression reference: does the flow limit the bootstrap, or do the images?

Trains a plain discriminative learner on the same committed datasets as
``bench/bootstrap.py`` and scores it on the same held-out sets: the model's own condition
encoder (the ``tiny`` preset's trunk, ``--width`` times wider) over the object crop and the
full image, then an MLP and a 3-D transposed-convolution head to 16³ occupancy logits,
trained with binary cross-entropy plus a soft-IoU loss. It answers one question only — how
much shape a direct, IoU-trained learner reads from these images at these sizes — so it
predicts no pose and takes no part in rounds.

Printed, all in one run: vIoU every ``--every`` steps on 256 training examples and the
real world's selection and reporting halves and the synthetic set (a learning curve:
nothing is chosen on it — the final scores are the last step's); then per seed the final
vIoU on each held-out set with the paired cluster-bootstrap 95% interval of its gain over
the constant shape fitted on the same training data; with ``--seeds N``, the spread.

Usage: python bench/direct.py --store DIR --iso3do V --occlusions V --real V --synthetic V
       [--steps 1000] [--every 250] [--batch 32] [--lr 1e-3] [--width 1] [--seeds 1]
Writes bench/results/direct.json. ~3 min per seed of 1000 steps on 2 cores.
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
from flywheel.learning.heldout import load_heldout  # noqa: E402
from sam3d_model.baselines import ConstantShape  # noqa: E402
from sam3d_model.condition import TRUNKS  # noqa: E402
from sam3d_model.config import ModelConfig, preset  # noqa: E402
from sam3d_model.evaluation import paired_gains  # noqa: E402
from sam3d_model.metrics import voxel_iou  # noqa: E402
from sam3d_model.shape_readout import ShapeReadout  # noqa: E402
from sam3d_model.shape_vae import occupancy_loss  # noqa: E402


class DirectRegressor(nn.Module):
    """crop, full (B, C_in, S, S) -> occupancy logits (B, R, R, R): the trunk and the read-out
    of the model's encoder pre-training (``sam3d_model.shape_readout``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = TRUNKS[cfg.encoder](cfg)
        self.readout = ShapeReadout(cfg, self.trunk.tokens)

    def forward(self, crop: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        b = crop.shape[0]
        features = self.trunk(torch.cat([crop, full]))  # both views share the trunk
        return self.readout(features[:b], features[b:])[0]


def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return occupancy_loss(logits, target)["loss"]


def predict(net: DirectRegressor, examples: list[dict], batch: int = 64) -> np.ndarray:
    """Boolean occupancy (n, R, R, R) at probability 0.5."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            logits = net(torch.stack([e["crop"] for e in chunk]), torch.stack([e["full"] for e in chunk]))
            out.append((logits > 0).numpy())
    net.train()
    return np.concatenate(out)


def vious(pred: np.ndarray, examples: list[dict]) -> list[float]:
    return [voxel_iou(p, (e["occupancy"] > 0.5).numpy()) for p, e in zip(pred, examples, strict=True)]


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
    a = p.parse_args()

    store = LocalStore(a.store)
    cfg = preset("tiny")
    cfg = cfg.model_copy(update={"encoder_channels": tuple(c * a.width for c in cfg.encoder_channels)})
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
    constant = ConstantShape.fit(train).occupancy.numpy() > 0.5
    constant_scores = {
        k: [{"viou": v} for v in vious(np.repeat(constant[None], len(h.examples), 0), h.examples)]
        for k, h in scored.items()
    }
    crops = torch.stack([e["crop"] for e in train])
    fulls = torch.stack([e["full"] for e in train])
    targets = torch.stack([e["occupancy"] for e in train]).float()
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
            value = loss(net(crops[idx], fulls[idx]), targets[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
            schedule.step()
            if step % a.every == 0 or step == a.steps:
                row = {k: float(np.mean(vious(predict(net, ex), ex))) for k, ex in watched.items()}
                curve.append({"step": step, **row})
                print(f"{'step ' + str(step):>28}" + "".join(f"{row[k]:>11.3f}" for k in watched), flush=True)
        final = {}
        for name, h in scored.items():
            objects = [{"viou": v} for v in vious(predict(net, h.examples), h.examples)]
            gain = paired_gains(constant_scores[name], objects, groups=h.mesh_ids)["viou"]
            final[name] = {"viou": float(np.mean([o["viou"] for o in objects])), "gain": asdict(gain)}
            print(
                f"  {name:>10}: {final[name]['viou']:.3f}  gain over the constant "
                f"{gain.gain:+.4f} [{gain.low:+.4f}, {gain.high:+.4f}]"
            )
        runs.append({"seed": seed, "curve": curve, "final": final, "seconds": time.perf_counter() - began})

    print(f"\nvIoU of the last step over {a.seeds} seed(s):")
    for name, h in scored.items():
        values = [r["final"][name]["viou"] for r in runs]
        base = np.mean([o["viou"] for o in constant_scores[name]])
        print(
            f"  {name:>10} ({len(h.examples)} objects): constant {base:.3f}, "
            f"direct mean {np.mean(values):.3f}, range {min(values):.3f} .. {max(values):.3f}"
        )
    out = Path(__file__).parent / "results" / "direct.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "runs": runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
