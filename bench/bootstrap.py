"""Bootstrap benchmark: does the round-0 model learn shape, or memorise its meshes?

Trains the bootstrap stages (VAE, pre-training on Iso-3DO, mid-training on Flying Occlusions)
on committed datasets of a store, and prints a learning curve of mean vIoU (one sample per
object, seed 0) on three sets, next to the constant-shape baseline fitted on the same
training data, all in the same run:

* ``train``: 32 of the Flying-Occlusions training composites (does the flow fit its data?),
* ``synthetic``: a held-out set of the synthetic world (does it generalise to new meshes?),
* ``real``: the reporting half of the "real" world's held-out set, with a segmenter's mask
  errors (the world gap the flywheel exists to close).

A model far above the constant on ``train`` and not on ``synthetic`` has memorised its meshes.
Curves, not intervals: use the round record's intervals (`flywheel rounds`) for decisions.

Usage: python bench/bootstrap.py --store DIR --iso3do V --occlusions V --real V --synthetic V
       [--pretrain 700] [--midtrain 1000] [--lr 3e-4] [--batch 16] [--probes 2]
(the versions a round used are in its record: `flywheel rounds --json`, or `flywheel datasets ls`).
Writes bench/results/bootstrap.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.datasets import Dataset  # noqa: E402
from flywheel.core.store import LocalStore  # noqa: E402
from flywheel.learning.examples import cached_examples  # noqa: E402
from flywheel.learning.heldout import load_heldout  # noqa: E402
from sam3d_model import train as T  # noqa: E402
from sam3d_model.baselines import ConstantShape  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.data import batch_stream  # noqa: E402
from sam3d_model.evaluation import viou_probe  # noqa: E402
from sam3d_model.model import build_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="a local store folder")
    for name in ("iso3do", "occlusions", "real", "synthetic"):
        p.add_argument(f"--{name}", required=True, metavar="VERSION")
    p.add_argument("--vae", type=int, default=400)
    p.add_argument("--pretrain", type=int, default=700)
    p.add_argument("--midtrain", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-4, help="pre- and mid-training (the VAE: 1e-3)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--probes", type=int, default=2)
    p.add_argument("--mask-error", type=float, default=0.1)
    a = p.parse_args()

    store = LocalStore(a.store)
    cfg = preset("tiny")
    iso = cached_examples(cfg, [Dataset(store, "iso3do", a.iso3do)])
    fo = cached_examples(cfg, [Dataset(store, "occlusions", a.occlusions)])
    sets = {
        "train": fo[:32],
        "synthetic": load_heldout(cfg, Dataset(store, "occlusions", a.synthetic)).examples,
        "real": load_heldout(cfg, Dataset(store, "occlusions", a.real), a.mask_error, "reporting").examples,
    }
    baseline = ConstantShape.fit(iso + fo)  # the round's constant-shape baseline, on the same training data
    constant = {name: viou_probe(examples)(baseline)["heldout_viou"] for name, examples in sets.items()}
    probes = {name: viou_probe(examples) for name, examples in sets.items()}
    model = build_model(cfg, 0)

    def settings(steps: int, lr: float) -> T.TrainSettings:
        return T.TrainSettings(steps=steps, lr=lr, log_every=10**6, checkpoint_every=10**9, warmup_steps=10)

    began = time.perf_counter()
    T.train_vae(model, batch_stream(lambda: iso, a.batch, 0), settings(a.vae, 1e-3))
    curves = {}
    for stage, fit, data, steps in (
        ("pretrain", T.pretrain, iso, a.pretrain),
        ("midtrain", T.midtrain, fo, a.midtrain),
    ):
        if not steps:
            continue
        result = fit(
            model,
            batch_stream(lambda d=data: d, a.batch, 0),
            settings(steps, a.lr),
            probe=lambda m: {name: probe(m)["heldout_viou"] for name, probe in probes.items()},
            probes=a.probes,
        )
        curves[stage] = [{k: h[k] for k in ("step", *sets)} for h in result.history if "real" in h]
    seconds = time.perf_counter() - began
    print(f"vIoU, one sample per object ({', '.join(f'{k} {len(v)}' for k, v in sets.items())} objects)")
    print(f"{'':>18}" + "".join(f"{k:>11}" for k in sets))
    print(f"{'constant shape':>18}" + "".join(f"{constant[k]:>11.3f}" for k in sets))
    for stage, rows in curves.items():
        for row in rows:
            print(f"{stage + ' ' + str(row['step']):>18}" + "".join(f"{row[k]:>11.3f}" for k in sets))
    print(f"trained in {seconds:.0f} s")
    out = Path(__file__).parent / "results" / "bootstrap.json"
    out.write_text(json.dumps({"args": vars(a), "constant": constant, "curves": curves, "seconds": seconds}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
