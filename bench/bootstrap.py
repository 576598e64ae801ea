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

Then each trained model is scored as a round scores it (the consensus of ``--samples`` samples
per object) on the real world's selection and reporting halves and the synthetic set, with
the paired cluster-bootstrap 95% interval of its vIoU gain over the constant shape. With
``--seeds N`` the whole bootstrap is trained N times on the same data, and the spread across
seeds is printed: the bootstrap's own training-seed noise, which a comparison of two
configurations on one run each cannot tell from an effect (issue 17: ±0.025 vIoU on a real
half of 32 objects).

Usage: python bench/bootstrap.py --store DIR --iso3do V --occlusions V --real V --synthetic V
       [--pretrain 700] [--midtrain 1000] [--lr 3e-4] [--batch 16] [--probes 2] [--seeds 1]
       [--samples 8]
(the versions a round used are in its record: `flywheel rounds --json`, or `flywheel datasets ls`).
Writes bench/results/bootstrap.json. Each seed costs ~6 min on 2 idle cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.datasets import Dataset  # noqa: E402
from flywheel.core.store import LocalStore  # noqa: E402
from flywheel.learning.examples import cached_examples  # noqa: E402
from flywheel.learning.heldout import load_heldout  # noqa: E402
from sam3d_model import train as T  # noqa: E402
from sam3d_model.baselines import ConstantShape  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.data import batch_stream  # noqa: E402
from sam3d_model.evaluation import evaluate, paired_gains, viou_probe  # noqa: E402
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
    p.add_argument("--seeds", type=int, default=1, help="train the bootstrap with seeds 0 .. N-1 on the same data")
    p.add_argument("--samples", type=int, default=8, help="samples per object in the final consensus scoring")
    a = p.parse_args()

    store = LocalStore(a.store)
    cfg = preset("tiny")
    iso = cached_examples(cfg, [Dataset(store, "iso3do", a.iso3do)])
    fo = cached_examples(cfg, [Dataset(store, "occlusions", a.occlusions)])
    real = Dataset(store, "occlusions", a.real)
    scored = {
        "selection": load_heldout(cfg, real, a.mask_error, "selection"),
        "reporting": load_heldout(cfg, real, a.mask_error, "reporting"),
        "synthetic": load_heldout(cfg, Dataset(store, "occlusions", a.synthetic)),
    }
    sets = {"train": fo[:32], "synthetic": scored["synthetic"].examples, "real": scored["reporting"].examples}
    baseline = ConstantShape.fit(iso + fo)  # the round's constant-shape baseline, on the same training data
    constant = {name: viou_probe(examples)(baseline)["heldout_viou"] for name, examples in sets.items()}
    probes = {name: viou_probe(examples) for name, examples in sets.items()}
    constant_scores = {name: evaluate(baseline, h.examples, seeds=1, truths=h.truths) for name, h in scored.items()}

    def settings(steps: int, lr: float) -> T.TrainSettings:
        return T.TrainSettings(steps=steps, lr=lr, log_every=10**6, checkpoint_every=10**9, warmup_steps=10)

    runs = []
    for seed in range(a.seeds):
        model = build_model(cfg, seed)
        began = time.perf_counter()
        T.train_vae(model, batch_stream(lambda: iso, a.batch, seed), settings(a.vae, 1e-3))
        curves = {}
        for stage, fit, data, steps in (
            ("pretrain", T.pretrain, iso, a.pretrain),
            ("midtrain", T.midtrain, fo, a.midtrain),
        ):
            if not steps:
                continue
            result = fit(
                model,
                batch_stream(lambda d=data: d, a.batch, seed),
                settings(steps, a.lr),
                probe=lambda m: {name: probe(m)["heldout_viou"] for name, probe in probes.items()},
                probes=a.probes,
            )
            curves[stage] = [{k: h[k] for k in ("step", *sets)} for h in result.history if "real" in h]
        seconds = time.perf_counter() - began
        model.eval()
        final = {}
        for name, h in scored.items():
            scores = evaluate(model, h.examples, seeds=1, samples=a.samples, truths=h.truths)
            gain = paired_gains(constant_scores[name]["objects"], scores["objects"], groups=h.mesh_ids)["viou"]
            final[name] = {"viou": scores["summary"]["viou"], "gain": asdict(gain)}
        runs.append({"seed": seed, "curves": curves, "final": final, "seconds": seconds})
        print(f"seed {seed}: vIoU, one sample per object ({', '.join(f'{k} {len(v)}' for k, v in sets.items())})")
        print(f"{'':>18}" + "".join(f"{k:>11}" for k in sets))
        print(f"{'constant shape':>18}" + "".join(f"{constant[k]:>11.3f}" for k in sets))
        for stage, rows in curves.items():
            for row in rows:
                print(f"{stage + ' ' + str(row['step']):>18}" + "".join(f"{row[k]:>11.3f}" for k in sets))
        print(f"seed {seed}: trained in {seconds:.0f} s; consensus of {a.samples} samples, gain over the constant:")
        for name, f in final.items():
            g = f["gain"]
            print(f"  {name:>10}: {f['viou']:.3f}  {g['gain']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]")

    constant_final = {name: scores["summary"]["viou"] for name, scores in constant_scores.items()}
    print(f"\nvIoU over {a.seeds} seed(s) on the same data (consensus of {a.samples}):")
    for name in scored:
        values = [r["final"][name]["viou"] for r in runs]
        print(
            f"  {name:>10} ({len(scored[name].examples)} objects): constant {constant_final[name]:.3f}, "
            f"model mean {np.mean(values):.3f}, range {min(values):.3f} .. {max(values):.3f}"
        )
    out = Path(__file__).parent / "results" / "bootstrap.json"
    out.write_text(
        json.dumps({"args": vars(a), "constant": constant, "constant_final": constant_final, "runs": runs}, indent=1)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
