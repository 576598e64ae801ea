"""The `flywheel` command as people run it: help, config show, datasets, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import BUCKET

from flywheel.core.contracts import SHAPES
from flywheel.core.datasets import version_of, write_dataset
from flywheel.core.store import LocalStore
from rendering.procedural_shapes import shape_samples

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")


def run(*args, env=None):
    return subprocess.run(
        [FLYWHEEL, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_help_lists_commands_and_exit_codes():
    out = run("--help")
    assert out.returncode == 0
    for word in ("run", "config", "datasets", "store", "Exit codes"):
        assert word in out.stdout
    assert run("datasets", "--help").returncode == 0


def test_help_shows_what_to_type_not_python_type_names():
    for command in (("run",), ("propose",), ("rankings", "ingest"), ("datasets", "ls")):
        out = run(*command, "--help", env={"COLUMNS": "200"})
        assert out.returncode == 0, out.stderr
        assert "<list[str]>" not in out.stdout.split("Options")[-1] and "<int>" not in out.stdout, out.stdout
    assert "--round               N" in run("rankings", "ingest", "--help", env={"COLUMNS": "200"}).stdout


def test_unknown_names_get_the_closest_public_ones_and_misspelt_overrides_a_warning(tmp_path):
    env = {"FLYWHEEL__STORE__ROOT": str(tmp_path)}
    for command in (("datasets", "show", "iso3d"), ("datasets", "ls", "occlusion")):
        out = run(*command, env=env)
        assert out.returncode == 4, out.stderr
        [line] = out.stderr.strip().splitlines()
        assert line.startswith("error: unknown dataset kind") and "did you mean" in line, line
        assert "-part" not in line and not line.startswith('error: "')  # public kinds, not a repr
    assert "did you mean iso3do?" in run("datasets", "show", "iso3d", env=env).stderr

    out = run("config", "show", env={"FLYWHEEL_RENDER_WORKERS": "3"})
    assert out.returncode == 0 and "render:\n  workers: 2" in out.stdout  # not applied
    assert "FLYWHEEL_RENDER_WORKERS is ignored" in out.stderr and "FLYWHEEL__RENDER__WORKERS" in out.stderr

    missing = run("rankings", "ingest", "export.jsonl", env=env)
    assert missing.returncode == 2 and "--round" in missing.stderr  # required: no silent round 0


def test_config_show_redacts_secrets_and_reports_bad_values():
    out = run("config", "show", env={"FLYWHEEL__MLFLOW__TRACKING_URI": "http://me:s3cret@mlflow:5000"})
    assert out.returncode == 0, out.stderr
    assert "http://me:***@mlflow:5000" in out.stdout and "s3cret" not in out.stdout
    assert "shard_max_samples: 4" in out.stdout  # configs/test.yaml through FLYWHEEL_CONFIG
    bad = run("config", "show", env={"FLYWHEEL__DATASETS__SHARD_MAX_SAMPLES": "0"})
    assert bad.returncode == 2
    assert "datasets.shard_max_samples = 0 (from environment" in bad.stderr


def test_datasets_ls_show_verify_gc(tmp_path):
    env = {"FLYWHEEL__STORE__ROOT": str(tmp_path)}
    empty = run("datasets", "ls", env=env)
    assert empty.returncode == 0 and "no datasets" in empty.stdout

    store = LocalStore(tmp_path)
    version = version_of(SHAPES, inputs={"n": 5})
    write_dataset(store, SHAPES, version, shape_samples(0, 5, 16), shard_max_samples=2)
    listing = run("datasets", "ls", env=env)
    assert listing.returncode == 0
    assert "shapes" in listing.stdout and version in listing.stdout

    show = run("datasets", "show", f"shapes@{version}", "--verify", env=env)
    assert show.returncode == 0, show.stderr
    assert "rows=5" in show.stdout and "shards:  3" in show.stdout and "verify: ok" in show.stdout
    assert "object_id: string" in show.stdout
    assert "quarantined: 0" in show.stdout

    assert run("datasets", "show", "shapes@nope", env=env).returncode == 4
    assert "not committed" in run("datasets", "show", "shapes@nope", env=env).stderr
    assert run("datasets", "show", "no-such-kind", env=env).returncode == 4

    (tmp_path / f"datasets/shapes/{version}/attempt-x/shards").mkdir(parents=True)
    (tmp_path / f"datasets/shapes/{version}/attempt-x/shards/shard-000000.tar").write_bytes(b"debris")
    gc = run("datasets", "gc", "--older-than-hours", "0", env=env)
    assert gc.returncode == 0 and "removed 1 uncommitted" in gc.stdout
    assert not (tmp_path / f"datasets/shapes/{version}/attempt-x").exists()

    shard = next((tmp_path / f"datasets/shapes/{version}").glob("attempt-*/shards/shard-000001.tar"))
    shard.write_bytes(b"corrupted")
    corrupt = run("datasets", "show", f"shapes@{version}", "--verify", env=env)
    assert corrupt.returncode == 1 and "checksum mismatch" in corrupt.stderr


def test_store_problems_exit_3(seaweedfs):
    env = {"FLYWHEEL__STORE__ROOT": f"s3://{BUCKET}/cli", "FLYWHEEL__STORE__ENDPOINT_URL": seaweedfs.endpoint_url}
    assert run("store", "check", env=env).returncode == 0
    wrong = run("datasets", "ls", env={**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong.returncode == 3 and "access denied" in wrong.stderr
    assert "not-the-secret" not in wrong.stderr
    missing = run("store", "check", env={**env, "FLYWHEEL__STORE__ROOT": "s3://missing-bucket/x"})
    assert missing.returncode == 3 and "does not exist" in missing.stderr


def test_datasets_show_lists_what_was_quarantined(tmp_path):
    from flywheel.core.datasets import DatasetWriter

    with DatasetWriter(LocalStore(tmp_path), SHAPES, "v-quarantine") as writer:
        writer.add(*next(shape_samples(0, 1, 16)))
        writer.quarantine("meshes/bad.obj", "mesh", "unsafe reference", "texture '../x.png' points outside")
        writer.quarantine("meshes/nan.obj", "mesh", "non-finite vertices")
    out = run("datasets", "show", "shapes@v-quarantine", env={"FLYWHEEL__STORE__ROOT": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "quarantined: 2 (non-finite vertices: 1, unsafe reference: 1)" in out.stdout
    assert "mesh meshes/bad.obj: texture '../x.png' points outside" in out.stdout


def test_config_file_option_and_bad_options_fail_at_the_start(tmp_path):
    """--config FILE is the config of the whole command (no environment variable carries it);
    a bad model override or a bad command option fails before any work, exit 2, named."""
    f = tmp_path / "mine.yaml"
    f.write_text("datasets:\n  shard_max_samples: 7\n")
    shown = run("--config", str(f), "config", "show")
    assert shown.returncode == 0 and "shard_max_samples: 7" in shown.stdout, shown.stderr
    override = run("config", "show", env={"FLYWHEEL__MODEL__OVERRIDES": "{no_such_field: 1}"})
    assert override.returncode == 2 and "model.overrides.no_such_field = 1" in override.stderr
    n = run("propose", "-n", "1")
    assert n.returncode == 2 and "num_candidates" in n.stderr, n.stderr
    model = run("propose", "--model", "champion")
    assert model.returncode == 2 and "--model needs KEY=REF" in model.stderr


def test_bad_inputs_at_the_door_exit_2_with_one_line(tmp_path):
    """A binary or unreadable config file, an s3 root with '..' components, and a dataset
    version that is a path: each one `error:` line naming the input, exit 2, no traceback."""
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    env = {"FLYWHEEL__STORE__ROOT": str(tmp_path / "store"), "FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state")}
    cases = [
        (("--config", str(binary), "config", "show"), {}, f"config file {binary}: not UTF-8 text"),
        (("--config", str(tmp_path), "config", "show"), {}, f"config file {tmp_path}: cannot be read"),
        (("store", "check"), {"FLYWHEEL__STORE__ROOT": "s3://bucket/../victim/x"}, "'.' or '..' components"),
        (("datasets", "show", "meshes@../x"), {}, "dataset meshes@../x: not a version"),
        (("validate", "meshes@../../etc"), {}, "dataset meshes@../../etc: not a version"),
    ]
    for args, extra, message in cases:
        out = run(*args, env={**env, **extra})
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.count("error:") == 1, out.stderr


def test_two_first_runs_set_the_state_folder_up_once_without_racing(tmp_path):
    """Two processes starting on a fresh state folder at once: one creates and migrates the
    MLflow and Prefect databases, the other waits for it (before: "table ... already exists")."""
    import sqlite3

    state = tmp_path / "state"
    code = (
        "from flywheel.core.config import load_config\n"
        "from flywheel.core.runtime import apply_environment\n"
        "cfg = apply_environment(load_config())\n"
        "from tasks.conventions import prepare_state\n"
        "prepare_state(cfg)\n"
    )
    # a fresh user's environment: Prefect and MLflow settings that earlier tests exported
    # (PREFECT_HOME, PREFECT_API_URL) would put the databases elsewhere
    fresh = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env = {**fresh, "FLYWHEEL__PROJECT__STATE_DIR": str(state)}
    runs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    errors = [run.communicate()[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    tables = {
        name: {
            row[0] for row in sqlite3.connect(state / db).execute("select name from sqlite_master where type='table'")
        }
        for name, db in (("mlflow", "mlflow.db"), ("prefect", "prefect/prefect.db"))
    }
    assert {"experiments", "alembic_version"} <= tables["mlflow"]
    assert {"flow_run", "alembic_version"} <= tables["prefect"]
