"""The architecture's rules, checked on the code as it is: the import contract of
pyproject.toml ([tool.importlinter]: layers, the model package and rendering standing
alone, no Prefect below tasks, no import cycles — imports inside functions count), and
imports without side effects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flywheel", "flows", "tasks", "rendering", "sam3d_model")


def test_import_contracts_are_kept():
    run = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "broken" not in run.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_importing_any_module_changes_no_environment_and_creates_nothing(tmp_path):
    """Every module of the project, imported in a fresh process in an empty folder, leaves
    the process environment and the folder as they were (configuration is loaded at an entry
    point, never on import)."""
    script = f"""
import importlib, json, os, pkgutil, sys
sys.path.insert(0, {str(REPO)!r})
before = dict(os.environ)
names = []
for package in {PACKAGES!r}:
    root = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name in ("rendering.blender_worker",):   # a script Blender workers run, not a module
            continue
        importlib.import_module(info.name)
        names.append(info.name)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({{"modules": names, "changed": changed, "made": sorted(os.listdir("."))}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL", "PREFECT_"))}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out["modules"]) > 60 and "flows.round" in out["modules"] and "tasks.training" in out["modules"]
    # Libraries may set their own variables on import; none of ours may appear or change.
    ours = [k for k in out["changed"] if k.startswith(("FLYWHEEL", "PREFECT_", "RAY_", "MLFLOW_", "GX_", "DO_NOT"))]
    assert ours == [], ours
    assert out["made"] == []
