"""The flywheel effect: K rounds of the demo world, against two controls, in one run.

Arms (each a series of its own in one shared store, so the synthetic data and the bootstrap
champion are made once and reused):

- ``full``: `flywheel run --rounds K` with the config as it is;
- ``full-seed1``: the same with training seed 1 (``model.seed``: bootstrap included), for the
  spread a second seed gives;
- ``no-dpo-no-reward``: the flywheel without flow-DPO (``model.dpo.steps: 0``) and without
  the reward model (``reward.oversample: 1``, no reward model trained);
- ``synthetic-only``: the bootstrap champion trained further on the synthetic replay data
  alone, each "round" the SFT stage's steps plus the DPO stage's (the flywheel's retrain
  compute), no images, no annotators.

Per round and arm it prints the champion's held-out means on the *reporting* half (the gate
selects on the other half) of vIoU, F1@0.01 and ADD-S@0.1 with 95% cluster-bootstrap
intervals (objects of one mesh drawn together), the constant-shape and retrieval baselines,
accept rate, yield (shown vs random N from the same proposals), hard cases, artist meshes
in the round's SFT, judgements spent and the decision; then the share of the
synthetic-to-real gap the final champion closed. It saves ``bench/results/flywheel_effect.json``
and ``flywheel_effect.png`` (the curves) and logs both to MLflow (run ``bench-flywheel``).

    .venv/bin/python bench/flywheel_effect.py                        # 5 rounds, the demo's sizes
    .venv/bin/python bench/flywheel_effect.py --rounds 2 --config configs/test.yaml   # micro, minutes
    .venv/bin/python bench/flywheel_effect.py --folder /tmp/fw       # keep (and resume) its state

Exit codes: 0 done; 1 an arm's `flywheel run` failed (its log is named).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
METRICS = ("viou", "f1", "add_s_accuracy")

ARMS: dict[str, dict[str, str]] = {
    "full": {},
    "full-seed1": {"FLYWHEEL__MODEL__SEED": "1"},
    "no-dpo-no-reward": {
        "FLYWHEEL__MODEL__DPO__STEPS": "0",
        "FLYWHEEL__REWARD__OVERSAMPLE": "1",
        "FLYWHEEL__REWARD__MIN_PAIRS": str(10**9),
    },
}


def arm_env(folder: Path, config: str, overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL", "PREFECT_"))}
    return {
        **env,
        "FLYWHEEL_CONFIG": config,
        "FLYWHEEL__PROJECT__STATE_DIR": str(folder / "state"),
        "FLYWHEEL__STORE__ROOT": str(folder / "store"),
        **overrides,
    }


def run_arm(folder: Path, config: str, name: str, rounds: int) -> float:
    """`flywheel run --rounds K` for one arm (committed rounds are read back, not re-run)."""
    log = folder / f"{name}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: flywheel run --rounds {rounds}  (log: {log})", flush=True)
    started = time.perf_counter()
    with open(log, "ab") as out:
        done = subprocess.run(
            [BIN / "flywheel", "run", "--rounds", str(rounds)],
            env=arm_env(folder, config, ARMS[name]),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode:
        print(f"{name}: flywheel run failed (exit {done.returncode}); see {log}", file=sys.stderr)
        raise SystemExit(1)
    return time.perf_counter() - started


def mean_interval(scores, metric: str) -> tuple[float, float, float]:
    """(mean, low, high) of ``metric`` over the reporting half, a 95% cluster bootstrap by mesh."""
    from flywheel.learning.heldout import in_half
    from sam3d_model.evaluation import paired_gains

    keep = in_half(scores.mesh_ids, "reporting")
    objects = [scores.objects[i] for i in keep]
    zeros = [{metric: 0.0} for _ in objects]
    found = paired_gains(zeros, [{metric: o[metric]} for o in objects], groups=[scores.mesh_ids[i] for i in keep])
    interval = found[metric]
    return interval.gain, interval.low, interval.high


def flywheel_rows(name: str, folder: Path, config: str) -> list[dict]:
    """Per committed round of an arm: the champion after it (its held-out scores, a cache hit of
    the round's own evaluation) and what the round's data engine did."""
    from flywheel.core.config import load_config
    from flywheel.rounds import ledger
    from tasks.conventions import store_for
    from tasks.training import evaluate_model

    cfg = load_config(environ=arm_env(folder, config, ARMS[name]))
    records = ledger.committed_rounds(store_for(cfg), ledger.series_id(cfg))
    rows = []
    for r in records:
        promoted = r.promotion.promote
        model, label = (r.challenger, "challenger") if promoted else (r.champion_before, "champion")
        scores = evaluate_model(
            cfg,
            model,
            r.datasets["held-out"],
            label,
            cfg.rounds.world.mask_error,
        )
        b = r.best_of_n
        rows.append(
            {
                "round": r.round,
                **{m: mean_interval(scores, m) for m in METRICS},
                "constant_viou": r.evaluation["constant"]["viou"],
                "retrieval_viou": r.evaluation["retrieval"]["viou"],
                "oracle_best_of_n_viou": b.get("oracle_viou", float("nan")),
                "accept_rate": r.rankings["accept_rate"],
                "yield": b.get("yield", float("nan")),
                "random_n_yield": b.get("random_yield", float("nan")),
                "hard_cases": r.rankings.get("hard_cases", 0),
                "artist_meshes": r.volumes.get("art3do", 0),
                "judgements": int(r.rankings.get("objects_judged", 0)) * cfg.rounds.judgements_per_object,
                "reward_heldout_accuracy": b.get("reward_heldout_accuracy", float("nan")),
                "promoted": promoted,
                "synthetic_viou": (
                    r.synthetic_heldout.summary["champion"]["viou"] if r.synthetic_heldout is not None else None
                ),
                "bootstrap_viou": r.evaluation["champion"]["viou"] if r.round == 0 else None,
            }
        )
    return rows


def synthetic_only_rows(folder: Path, config: str, rounds: int, start) -> list[dict]:
    """The bootstrap champion trained further on synthetic replay alone, round by round."""
    from flywheel.core.config import load_config
    from flywheel.learning.stages import stage_settings
    from flywheel.rounds import ledger
    from tasks.conventions import store_for
    from tasks.training import evaluate_model, train_stage

    cfg = load_config(environ=arm_env(folder, config, {}))
    first = ledger.committed_rounds(store_for(cfg), ledger.series_id(cfg))[0]
    replay, heldout = first.datasets["replay"], first.datasets["held-out"]
    settings = stage_settings(cfg.model, "sft")
    settings["steps"] = cfg.model.sft.steps + cfg.model.dpo.steps  # the flywheel's retrain compute
    checkpoint = start.checkpoint
    rows = []
    for k in range(rounds):
        print(f"[{time.strftime('%H:%M:%S')}] synthetic-only: round {k}", flush=True)
        checkpoint = train_stage(cfg, "sft", checkpoint, {"replay": [replay]}, settings, {}, label="synthetic-only")
        scores = evaluate_model(
            cfg,
            checkpoint,
            heldout,
            f"synthetic-only-{k}",
            cfg.rounds.world.mask_error,
        )
        rows.append({"round": k, **{m: mean_interval(scores, m) for m in METRICS}})
    return rows


def table(name: str, rows: list[dict]) -> str:
    head = f"{name}\n  round   vIoU [95% CI]          F1@0.01 [95% CI]      ADD-S@0.1 [95% CI]"
    flywheel = rows and "accept_rate" in rows[0]
    if flywheel:
        head += "     const  retr  oracle  accept  yield (random N)  hard  artist  judged  reward-acc  decision"
    lines = [head]
    for r in rows:
        cells = "  ".join(f"{r[m][0]:.3f} [{r[m][1]:+.3f},{r[m][2]:+.3f}]".ljust(21) for m in METRICS)
        line = f"  {r['round']:>5}   {cells}"
        if flywheel:
            line += (
                f"  {r['constant_viou']:.3f}  {r['retrieval_viou']:.3f}  {r['oracle_best_of_n_viou']:.3f}"
                f"   {r['accept_rate']:.2f}   {r['yield']:.2f} ({r['random_n_yield']:.2f})"
                f"      {r['hard_cases']:>4}  {r['artist_meshes']:>6}  {r['judgements']:>6}"
                f"  {r['reward_heldout_accuracy']:>10.2f}  {'promoted' if r['promoted'] else 'kept'}"
            )
        lines.append(line)
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    for ax, metric in zip(axes, METRICS):
        for name, rows in results.items():
            xs = [r["round"] for r in rows]
            mean = [r[metric][0] for r in rows]
            line = ax.plot(xs, mean, marker="o", label=name, linestyle="--" if name == "full-seed1" else "-")[0]
            ax.fill_between(
                xs, [r[metric][1] for r in rows], [r[metric][2] for r in rows], alpha=0.15, color=line.get_color()
            )
        if metric == "viou" and results.get("full"):
            ax.axhline(results["full"][0]["constant_viou"], color="grey", linestyle=":", label="constant shape")
        ax.set_title(f"champion {metric}, held-out reporting half (95% CI)", fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--folder", type=Path, help="state and store of every arm (default: a new temporary folder)")
    args = parser.parse_args()
    folder = (args.folder or Path(tempfile.mkdtemp(prefix="bench-flywheel-"))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds = {name: run_arm(folder, args.config, name, args.rounds) for name in ARMS}

    # the bench's own reading and the synthetic-only control run in one Prefect flow
    os.environ.update(arm_env(folder, args.config, {}))
    from prefect import flow

    from flywheel.core.config import load_config
    from flywheel.core.runtime import apply_environment
    from tasks.conventions import ensure_result_storage

    cfg = apply_environment(load_config(environ=dict(os.environ)))
    ensure_result_storage(cfg)

    @flow(name="bench-flywheel", log_prints=True)
    def read_and_control() -> dict[str, list[dict]]:
        out = {name: flywheel_rows(name, folder, args.config) for name in ARMS}
        t0 = time.perf_counter()
        bootstrap = ledger_first_champion(folder, args.config)
        out["synthetic-only"] = synthetic_only_rows(folder, args.config, args.rounds, bootstrap)
        seconds["synthetic-only"] = time.perf_counter() - t0
        return out

    results = read_and_control()
    for name, rows in results.items():
        print(table(name, rows), flush=True)
    full = results["full"]
    bootstrap, synthetic = full[0]["bootstrap_viou"], full[0]["synthetic_viou"]
    summary = {"seconds": {**seconds, "total": time.perf_counter() - started}, "rounds": args.rounds}
    if synthetic is not None:
        gap = synthetic - bootstrap
        closed = {
            name: (rows[-1]["viou"][0] - bootstrap) / gap if gap > 0 else float("nan") for name, rows in results.items()
        }
        summary |= {"bootstrap_real_viou": bootstrap, "bootstrap_synthetic_viou": synthetic, "gap_closed": closed}
        print(
            f"\nsynthetic-to-real gap of the bootstrap champion (vIoU): synthetic {synthetic:.3f} - real {bootstrap:.3f}"
            f" = {gap:+.3f}; share closed by round {args.rounds - 1}: "
            + ", ".join(f"{n} {c:+.2f}" for n, c in closed.items())
        )
    last = {name: rows[-1]["viou"] for name, rows in results.items()}
    print(
        "final champion vIoU, full vs synthetic-only: "
        f"{last['full'][0] - last['synthetic-only'][0]:+.3f} (interval widths {last['full'][2] - last['full'][1]:.3f}"
        f" and {last['synthetic-only'][2] - last['synthetic-only'][1]:.3f})"
    )
    print("seconds per arm: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "flywheel_effect.json"
    out.write_text(json.dumps({**summary, "arms": results}, indent=1, default=float))
    picture = plot(results, RESULTS / "flywheel_effect.png")
    log_to_mlflow(cfg, [out, picture])
    print(f"wrote {out} and {picture}; state in {folder}")


def ledger_first_champion(folder: Path, config: str):
    from flywheel.core.config import load_config
    from flywheel.rounds import ledger
    from tasks.conventions import store_for

    cfg = load_config(environ=arm_env(folder, config, {}))
    return ledger.committed_rounds(store_for(cfg), ledger.series_id(cfg))[0].champion_before


def log_to_mlflow(cfg, paths: list[Path]) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment)
    with mlflow.start_run(run_name="bench-flywheel"):
        for path in paths:
            mlflow.log_artifact(str(path), "bench")


if __name__ == "__main__":
    main()
