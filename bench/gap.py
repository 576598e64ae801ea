"""Where the synthetic-to-real gap comes from: per-family vIoU of trained bootstrap models.

Scores the models that ``bench/bootstrap.py --save DIR`` kept (``DIR/seed-*.pt``) as a round
scores them (the consensus of ``--samples`` samples per object, averaged over the models) on
the whole real held-out set twice — with the segmenter's masks the round sees and with the true
masks — and on the synthetic held-out set, each per mesh family, beside the constant shape
fitted on the same training data. The real-world families that training never showed
(``rendering.meshes.REAL_WORLD_FAMILIES``) are marked; the difference between the two real rows
is what the segmenter's mask errors cost.

With ``--factors``, the real world's held-out set is also rendered (through the flows, cached
like a round's) once per field of the world's ``occlusions`` settings set back to the synthetic
world's value (the lens, the occlusion band, the pose ranges), and once with all of them: the
same meshes, so each variant's paired gain over the real row, with its cluster-bootstrap
interval, is what that difference between the worlds costs the model. It uses the effective
flywheel config (embedded defaults, ``--config``, FLYWHEEL__* variables), which must be the one
that made ``--real`` in ``--store``.

Usage: python bench/gap.py --store DIR --models DIR --iso3do V --occlusions V --real V --synthetic V
       [--samples 8] [--mask-error 0.1] [--factors [--config FILE]]
Writes bench/results/gap.json. About 1 min per model and set on 2 cores (+ ~1 min per rendered variant).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.core.datasets import Dataset  # noqa: E402
from flywheel.core.store import LocalStore  # noqa: E402
from flywheel.learning.examples import cached_examples  # noqa: E402
from flywheel.learning.heldout import HeldOut, load_heldout  # noqa: E402
from rendering.meshes import REAL_WORLD_FAMILIES  # noqa: E402
from sam3d_model.baselines import ConstantShape  # noqa: E402
from sam3d_model.config import preset  # noqa: E402
from sam3d_model.evaluation import evaluate, paired_gains  # noqa: E402
from sam3d_model.interface import Sampler  # noqa: E402
from sam3d_model.model import build_model  # noqa: E402


def by_family(values: np.ndarray, families: list[str]) -> dict[str, dict[str, float]]:
    """Per-object values (n,) -> {family: {"n": count, "viou": mean}}, and "all"."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, family in enumerate(families):
        groups[family].append(i)
    out = {family: {"n": len(idx), "viou": float(values[idx].mean())} for family, idx in sorted(groups.items())}
    return {**out, "all": {"n": len(values), "viou": float(values.mean())}}


def factor_worlds(config: Path | None, store: Path, real: str) -> dict[str, str]:
    """{variant: occlusions version} of the real world's held-out set with each of the world's
    ``occlusions`` fields set back to the synthetic world's value, then with all of them."""
    from prefect import flow

    from flows.stages import flow_config, heldout_libraries, heldout_worlds, occlusions, run_locked, with_fields
    from flywheel.core.config import load_config

    cfg = load_config(config)
    if Path(cfg.store_root).resolve() != store.resolve():
        raise SystemExit(f"--factors: the config's store is {cfg.store_root}, not --store {store}")
    synthetic = cfg.occlusions.model_dump()
    fields = {key: synthetic[key] for key in cfg.rounds.world.occlusions if key not in ("seed", "num_samples")}
    variants = {f"{key} as synthetic": {key: value} for key, value in fields.items()}
    variants["all of them as synthetic"] = fields
    versions: dict[str, str] = {}

    @flow(name="bench-world-factors")
    def render() -> None:
        def body(cfg, parent):
            library = heldout_libraries(cfg, parent)[0]
            world = heldout_worlds(cfg)[0]
            made = occlusions(world, library, parent)
            if made.version != real:
                raise SystemExit(
                    f"--factors: this config makes the real held-out set {made.version}, not --real {real}"
                )
            refs = [made]
            for name, changed in variants.items():
                refs.append(occlusions(with_fields(world, "occlusions", **changed), library, parent))
                versions[name] = refs[-1].version
            return refs

        run_locked(flow_config(cfg), "bench-world-factors", body)

    render()
    return versions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="a local store folder")
    p.add_argument("--models", required=True, type=Path, help="bench/bootstrap.py --save's folder (seed-*.pt)")
    for name in ("iso3do", "occlusions", "real", "synthetic"):
        p.add_argument(f"--{name}", required=True, metavar="VERSION")
    p.add_argument("--samples", type=int, default=8, help="samples per object in the consensus")
    p.add_argument("--mask-error", type=float, default=0.1, help="the segmenter's error rate of the real world")
    p.add_argument("--factors", action="store_true", help="also score the real world with each factor made synthetic")
    p.add_argument("--config", type=Path, help="with --factors: the flywheel config that made --real")
    a = p.parse_args()
    if a.config and not a.factors:
        p.error("--config is only read with --factors")

    paths = sorted(a.models.glob("seed-*.pt"))
    if not paths:
        p.error(f"--models {a.models}: no seed-*.pt (bench/bootstrap.py --save writes them)")
    store = LocalStore(a.store)
    cfg = preset("tiny")
    models = []
    for path in paths:
        model = build_model(cfg, 0)
        model.load_state_dict(torch.load(path, map_location="cpu"))
        models.append(model.eval())
    training = cached_examples(cfg, [Dataset(store, "iso3do", a.iso3do), Dataset(store, "occlusions", a.occlusions)])
    constant = ConstantShape.fit(training)
    real = Dataset(store, "occlusions", a.real)
    sets: dict[str, HeldOut] = {
        "real, segmenter masks": load_heldout(cfg, real, a.mask_error),
        "real, true masks": load_heldout(cfg, real, 0.0),
        "synthetic": load_heldout(cfg, Dataset(store, "occlusions", a.synthetic)),
    }
    factors = factor_worlds(a.config, Path(a.store), a.real) if a.factors else {}
    for name, version in factors.items():
        variant = sets[f"real, {name}"] = load_heldout(cfg, Dataset(store, "occlusions", version), a.mask_error)
        if variant.mesh_ids != sets["real, segmenter masks"].mesh_ids:  # the paired gains below need it
            raise SystemExit(f"--factors: occlusions@{version} ({name}) does not show the real set's meshes in order")

    def viou(sampler: Sampler, h: HeldOut, samples: int) -> np.ndarray:
        scores = evaluate(sampler, h.examples, seeds=1, samples=samples, truths=h.truths)
        return np.array([o["viou"] for o in scores["objects"]])

    results: dict[str, dict] = {}
    per_object = {}
    for name, h in sets.items():
        model = per_object[name] = np.mean([viou(m, h, a.samples) for m in models], axis=0)
        results[name] = {
            "constant": by_family(viou(constant, h, 1), h.families),
            "model": by_family(model, h.families),
        }
        print(f"{name} (vIoU; model: consensus of {a.samples}, mean of {len(models)} model(s))")
        print(f"  {'family':>16} {'n':>3} {'constant':>9} {'model':>7} {'gain':>7}")
        for family, c in results[name]["constant"].items():
            m = results[name]["model"][family]["viou"]
            mark = " *" if family in REAL_WORLD_FAMILIES else ""
            print(f"  {family + mark:>16} {c['n']:>3} {c['viou']:>9.3f} {m:>7.3f} {m - c['viou']:>+7.3f}", flush=True)
    print("  * a family only the real world has")
    if factors:
        base = "real, segmenter masks"
        print(f"\nwhat each difference of the worlds costs: the model's paired vIoU gain over '{base}' (same meshes)")
        for name in factors:
            variant = f"real, {name}"
            gain = paired_gains(
                [{"viou": v} for v in per_object[base]],
                [{"viou": v} for v in per_object[variant]],
                groups=sets[base].mesh_ids,
            )["viou"]
            results[variant]["gain_over_real"] = {"gain": gain.gain, "low": gain.low, "high": gain.high}
            print(f"  {name:>32}: {gain}")
    out = Path(__file__).parent / "results" / "gap.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": {**vars(a), "models": [str(p) for p in paths], "config": str(a.config) if a.config else None},
                "sets": results,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
