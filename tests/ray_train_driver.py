"""One training stage in its own process, for the Ray Train tests (the kill test SIGKILLs it).

    python ray_train_driver.py STAGE DATASETS_JSON RUN_NAME OUT [KILL_AT_STEP]

DATASETS_JSON: role -> [DatasetRef.to_dict()].

The config comes from the environment (FLYWHEEL__...: store, preset, steps, train_workers).
Trains a new model of the configured preset on DATASETS_JSON (role -> [refs]) with
``run_stage_on_ray`` (train_workers > 0) or in this process (0), and saves its weights to
OUT. KILL_AT_STEP: rank 0 SIGKILLs this driver once it has logged that step (a node or
driver dying mid-stage; Ray then stops the job's workers).
"""

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from flywheel.core.config import load_config
from flywheel.core.datasets import Dataset
from flywheel.core.records import DatasetRef
from flywheel.core.store import open_store
from flywheel.learning.architecture import model_architecture
from flywheel.learning.ray_train import run_stage_on_ray
from flywheel.learning.stages import run_stage, stage_settings
from sam3d_model.model import build_model


class KillDriver:
    """A TrainLog whose metrics at ``step`` SIGKILL the driver process."""

    def __init__(self, pid: int, step: int):
        self.pid, self.step = pid, step

    def params(self, params: dict) -> None:
        pass

    def metrics(self, values: dict, step: int) -> None:
        if step >= self.step:
            # Ray Train's controller records a reported checkpoint when it next polls the workers
            # (the run's snapshot in storage); a driver that dies before that has nothing to
            # resume from. Give it the time a real run has between checkpoints.
            time.sleep(5)
            os.kill(self.pid, signal.SIGKILL)

    def finished(self, stage: str, history: list[dict]) -> None:
        pass


def main() -> None:
    stage, datasets_json, run_name, out = sys.argv[1:5]
    kill_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
    cfg = load_config()
    refs = {role: [DatasetRef(**r) for r in refs] for role, refs in json.loads(datasets_json).items()}
    settings = stage_settings(cfg.model, stage)
    model = build_model(model_architecture(cfg.model), settings["seed"])
    log_to = KillDriver(os.getpid(), kill_at) if kill_at else None
    if cfg.model.train_workers:
        counts = run_stage_on_ray(cfg, stage, model, refs, settings, run_name, log_to)
    else:
        store = open_store(cfg.store_root, cfg.store)
        datasets = {role: [Dataset(store, r.name, r.version) for r in rs] for role, rs in refs.items()}
        counts = run_stage(stage, model, datasets, settings, Path(tempfile.mkdtemp()), log_to)
    torch.save(model.state_dict(), out)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
