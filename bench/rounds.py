"""On-call re-run cost: a round killed in its last stage (held-out evaluation and promotion)
and re-run, against a full round, measured in the same run.

Each run is the real CLI (`flywheel run`) in a fresh store and state folder, with its own
temporary Prefect server: (1) a clean round 0; (2) round 0 in another store, SIGKILLed once
its challenger is registered, then (3) re-run. Prints the times and (3) / (1).

    .venv/bin/python bench/rounds.py                         # micro sizes (configs/test.yaml)
    .venv/bin/python bench/rounds.py --config configs/default.yaml   # the demo's sizes
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(folder: Path, config: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL", "PREFECT_"))}
    return {
        **env,
        "FLYWHEEL_CONFIG": config,
        "FLYWHEEL__PROJECT__STATE_DIR": str(folder / "state"),
        "FLYWHEEL__STORE__ROOT": str(folder / "store"),
    }


def timed_round(folder: Path, config: str, log_name: str) -> float:
    """Seconds of one `flywheel run` to the end (its stderr in ``folder/log_name``)."""
    started = time.perf_counter()
    subprocess.run(
        [BIN / "flywheel", "run"],
        env=_env(folder, config),
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / log_name, "wb"),
    )
    return time.perf_counter() - started


def killed_then_rerun(folder: Path, config: str) -> tuple[float, float]:
    log = folder / "killed.log"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [BIN / "flywheel", "run"],
        env=_env(folder, config),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    while (
        sum(
            "Task run 'register-model" in line and "Completed" in line
            for line in log.read_text(errors="replace").splitlines()
        )
        < 2
    ):  # bootstrap, then challenger
        if proc.poll() is not None:
            raise SystemExit(f"the round ended before its last stage:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    until_kill = time.perf_counter() - started
    if list((folder / "store").glob("rounds/*/round-0000.json")):
        raise SystemExit("killed too late: the round had committed")
    return until_kill, timed_round(folder, config, "rerun.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "test.yaml"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-rounds-") as tmp:
        clean, killed = Path(tmp) / "clean", Path(tmp) / "killed"
        clean.mkdir()
        killed.mkdir()
        full = timed_round(clean, args.config, "full.log")
        until_kill, rerun = killed_then_rerun(killed, args.config)
        a = json.loads(next((clean / "store").glob("rounds/*/round-0000.json")).read_text())
        b = json.loads(next((killed / "store").glob("rounds/*/round-0000.json")).read_text())
        same = all(a[k] == b[k] for k in ("champion_before", "challenger", "champion_after", "evaluation", "promotion"))
    print(f"config {args.config}")
    print(f"  full round (clean store):              {full:7.1f} s")
    print(f"  killed in its last stage after:        {until_kill:7.1f} s")
    print(f"  re-run to commit:                      {rerun:7.1f} s  = {rerun / full:.2f} of a full round")
    print(f"  committed round equals the clean one:  {same}")
    print("  seconds per phase, clean / re-run (the rest is start-up: Prefect server, Ray, imports):")
    for phase in a["seconds"]:
        print(f"    {phase:28s} {a['seconds'][phase]:7.1f} / {b['seconds'].get(phase, 0.0):7.1f}")
    out = REPO / "bench" / "results" / "rounds.json"
    out.write_text(
        json.dumps(
            {
                "config": args.config,
                "full_s": full,
                "until_kill_s": until_kill,
                "rerun_s": rerun,
                "rerun_fraction": rerun / full,
                "same_result": same,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
