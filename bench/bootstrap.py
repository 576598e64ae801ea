"""Bootstrap benchmark: does the round-0 model learn shape, or memorise its meshes?

Trains the bootstrap stages (VAE, the image encoder, pre-training on Iso-3DO, mid-training on
Flying Occlusions) on committed datasets of a store, as a round does, and prints a learning
curve of mean vIoU (one sample per object, seed 0) on three sets, next to the constant-shape
baseline fitted on the same training data, all in the same run:

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
half of 32 objects). With N > 1 the N models are also scored as one ensemble (the consensus
of the same number of samples, drawn in turn from each model).

Last, the ceilings on each set, beside those scores: the shape VAE's reconstruction of the
true shapes (the flow generates in its latent space, so it cannot do better) and the library
oracle, the training mesh nearest each true shape (what a perfect retrieval from the
training data would reach).

Usage: python bench/bootstrap.py --store DIR --iso3do V --occlusions V --real V --synthetic V
       [--encoder 1000] [--pretrain 700] [--midtrain 1500] [--lr 3e-4] [--batch 16] [--probes 2]
       [--seeds 1] [--samples 8] [--save DIR] [--set FIELD=JSON ...]
(``--set``: a ModelConfig field over the ``tiny`` preset, for ablations, e.g.
``--set condition_summary=0 --set 'loss_weights={"occupancy": 0}'``)
(the versions a round used are in its record: `flywheel rounds --json`, or `flywheel datasets ls`).
Writes bench/results/bootstrap.json. Each seed costs ~9 min on 2 idle cores at the defaults.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.datasets import Dataset  # noqa: E402
from flywheel.core.store import LocalStore  # noqa: E402
from flywheel.learning.examples import cached_examples  # noqa: E402
from flywheel.learning.heldout import load_heldout  # noqa: E402
from sam3d_model import train as T  # noqa: E402
from sam3d_model.baselines import ConstantShape  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.data import batch_stream, curriculum_stream  # noqa: E402
from sam3d_model.evaluation import evaluate, paired_gains, viou_probe  # noqa: E402
from sam3d_model.interface import Prediction, Sampler  # noqa: E402
from sam3d_model.model import SmallSam3D, build_model  # noqa: E402


class SeedEnsemble:
    """Several models as one sampler: of a batch laid out as K sample blocks of B objects
    (:func:`sam3d_model.evaluation.repeated`), block k is sampled by model k mod M, so the
    consensus of K samples mixes the models at one model's cost."""

    def __init__(self, models: list[SmallSam3D], samples: int):
        self.models, self.samples = models, samples

    def sample(self, batch: dict, *, steps=None, guidance=None, shortcut=False, seed=0) -> Prediction:
        rows = next(iter(batch.values())).shape[0] // self.samples
        parts = [
            self.models[k % len(self.models)].sample(
                {n: v[k * rows : (k + 1) * rows] for n, v in batch.items()}, shortcut=shortcut, seed=seed * 1000 + k
            )
            for k in range(self.samples)
        ]
        return Prediction(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("occupancy", "rotation", "translation", "scale"))
        )


def ceilings(models: list[SmallSam3D], library: torch.Tensor, truths: list) -> dict[str, float]:
    """Mean vIoU of the VAE's reconstruction of the true shapes (mean over ``models``) and of
    the nearest ``library`` shape (L, R, R, R) bool to each."""
    true = torch.stack([torch.from_numpy(t.occupancy) for t in truths])  # (n, R, R, R) bool

    def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (n, V), (m, V) bool -> (n, m)
        a, b = a.flatten(1).float(), b.flatten(1).float()
        inter = a @ b.T
        return inter / (a.sum(1, keepdim=True) + b.sum(1) - inter).clamp_min(1)

    with torch.no_grad():
        vae = [
            float(torch.diagonal(iou(true, m.decode_shape(m.encode_shape(true.float())).cpu() > 0.5)).mean())
            for m in models
        ]
    return {"vae": float(np.mean(vae)), "library_oracle": float(iou(true, library).max(1).values.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="a local store folder")
    for name in ("iso3do", "occlusions", "real", "synthetic"):
        p.add_argument(f"--{name}", required=True, metavar="VERSION")
    p.add_argument("--vae", type=int, default=400)
    p.add_argument("--encoder", type=int, default=1000, help="steps of the image encoder's pre-training (0: none)")
    p.add_argument("--pretrain", type=int, default=700)
    p.add_argument("--midtrain", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-4, help="pre- and mid-training (the VAE: 1e-3)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--probes", type=int, default=2)
    p.add_argument("--mask-error", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=1, help="train the bootstrap with seeds 0 .. N-1 on the same data")
    p.add_argument("--samples", type=int, default=8, help="samples per object in the final consensus scoring")
    p.add_argument("--save", type=Path, help="a folder to save each trained model in (seed-N.pt: its state dict)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a ModelConfig field")
    a = p.parse_args()

    store = LocalStore(a.store)
    cfg = preset("tiny", **{k: json.loads(v) for k, v in (item.split("=", 1) for item in a.set)})
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

    def as_a_round_scores(sampler: Sampler) -> dict[str, dict]:
        """Per held-out set: the consensus vIoU and its gain over the constant, with its interval."""
        final = {}
        for name, h in scored.items():
            scores = evaluate(sampler, h.examples, seeds=1, samples=a.samples, truths=h.truths)
            gain = paired_gains(constant_scores[name]["objects"], scores["objects"], groups=h.mesh_ids)["viou"]
            final[name] = {"viou": scores["summary"]["viou"], "gain": asdict(gain)}
        return final

    def settings(steps: int, lr: float) -> T.TrainSettings:
        return T.TrainSettings(steps=steps, lr=lr, log_every=10**6, checkpoint_every=10**9, warmup_steps=10)

    runs, models = [], []
    for seed in range(a.seeds):
        model = build_model(cfg, seed)
        began = time.perf_counter()
        T.train_vae(model, batch_stream(lambda: iso, a.batch, seed), settings(a.vae, 1e-3))
        if a.encoder:  # as the round's encoder stage: 32 a step, both datasets in proportion
            share = len(iso) / (len(iso) + len(fo))
            mixed = curriculum_stream(lambda: fo, lambda: iso, [share], a.encoder, 32, seed)
            T.pretrain_encoder(model, mixed, settings(a.encoder, 1e-3))
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
        final = as_a_round_scores(model)
        runs.append({"seed": seed, "curves": curves, "final": final, "seconds": seconds})
        models.append(model)
        if a.save:
            a.save.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), a.save / f"seed-{seed}.pt")
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
    ensemble = as_a_round_scores(SeedEnsemble(models, a.samples)) if len(models) > 1 else {}
    for name, f in ensemble.items():
        g = f["gain"]
        print(
            f"  {name:>10}: ensemble of {len(models)} seeds {f['viou']:.3f}  {g['gain']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
        )
    library = torch.unique(torch.stack([e["occupancy"] > 0.5 for e in iso + fo]), dim=0)
    bounds = {name: ceilings(models, library, h.truths) for name, h in scored.items()}
    print(
        f"\nceilings (vIoU): the VAE's reconstruction of the true shape; the nearest of {len(library)} training shapes"
    )
    for name, b in bounds.items():
        print(f"  {name:>10}: VAE {b['vae']:.3f}, library oracle {b['library_oracle']:.3f}")
    out = Path(__file__).parent / "results" / "bootstrap.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": {**vars(a), "save": str(a.save) if a.save else None},
                "constant": constant,
                "constant_final": constant_final,
                "runs": runs,
                "ensemble": ensemble,
                "ceilings": bounds,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
