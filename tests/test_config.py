"""Configuration: defaults < files < environment; bad values fail with field, value, source."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.core.config import DEFAULT_CONFIG_FILE, ConfigError, FlywheelConfig, load_config, redacted


def test_embedded_defaults_load():
    assert DEFAULT_CONFIG_FILE == Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
    cfg = load_config(environ={})
    assert cfg.meshes.num_procedural == 800 != FlywheelConfig().meshes.num_procedural  # the file, not the schema
    assert cfg.store.root == ".flywheel/store"
    assert cfg.meshes.occupancy_resolution == 16 and cfg.iso3do.views == 3
    assert cfg.mlflow_tracking_uri == f"sqlite:///{Path('.flywheel').resolve() / 'mlflow.db'}"


def test_file_then_environment_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("store:\n  root: s3://my-bucket/data\n  max_attempts: 7\niso3do:\n  seed: 3\n")
    cfg = load_config(f, environ={"FLYWHEEL__ISO3DO__SEED": "11", "FLYWHEEL__STORE__REGION": "eu-west-1"})
    assert cfg.store.root == "s3://my-bucket/data" and cfg.store.max_attempts == 7
    assert cfg.iso3do.seed == 11  # env beats file, parsed as an int
    assert cfg.store.region == "eu-west-1"
    assert cfg.store.connect_timeout_s == 5.0  # untouched default
    assert load_config(environ={"FLYWHEEL_CONFIG": str(f)}).store.root == "s3://my-bucket/data"


@pytest.mark.parametrize(
    "environ, field, value, why",
    [
        ({"FLYWHEEL__STORE__MAX_ATTEMPTS": "0"}, "store.max_attempts", "0", "greater than or equal to 1"),
        ({"FLYWHEEL__MESHES__OCCUPANCY_RESOLUTION": "20"}, "meshes.occupancy_resolution", "20", "16, 32 or 64"),
        (
            {"FLYWHEEL__OCCLUSIONS__VISIBLE_BAND": "[0.9, 0.2]"},
            "occlusions.visible_band",
            "[0.9, 0.2]",
            "0 < low < high < 1",
        ),
        ({"FLYWHEEL__RENDER__DEVICE": "TPU"}, "render.device", "'TPU'", "'CPU' or 'GPU'"),
        ({"FLYWHEEL__STORE__ROOT": "s3://UPPER/x"}, "store.root", "'s3://UPPER/x'", "valid bucket name"),
        ({"FLYWHEEL__STORE__ROOT": "gs://b/x"}, "store.root", "'gs://b/x'", "unsupported scheme 'gs'"),
        ({"FLYWHEEL__ISO3DO__VIEWS": "many"}, "iso3do.views", "'many'", "valid integer"),
        ({"FLYWHEEL__STORE__ROOTT": "x"}, "store.roott", "'x'", "Extra inputs are not permitted"),
        ({"FLYWHEEL__ROUNDS__WORLD__MASK_ERROR": "0.9"}, "rounds.world.mask_error", "0.9", "less than or equal to 0.5"),
    ],
)
def test_bad_value_names_field_value_source_and_reason(environ, field, value, why):
    with pytest.raises(ConfigError) as err:
        load_config(environ=environ)
    msg = str(err.value)
    env_name = next(iter(environ))
    assert f"{field} = {value} (from environment {env_name})" in msg
    assert why in msg


def test_bad_file_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("prefect:\n  task_retries: -1\n")
    with pytest.raises(ConfigError, match=rf"prefect.task_retries = -1 \(from file {f}\)"):
        load_config(f, environ={})
    f.write_text("rounds:\n  world:\n    occlusions: {fov_deg: 500}\n")  # the "real" world's fields are checked too
    with pytest.raises(
        ConfigError, match=rf"rounds.world.occlusions.fov_deg = 500 \(from file {f}\): .* less than 120"
    ):
        load_config(f, environ={})
    f.write_text("[not, a, mapping]")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_passwords_in_uris_are_redacted():
    cfg = load_config(environ={"FLYWHEEL__MLFLOW__TRACKING_URI": "https://ops:hunter2@mlflow.example:5000"})
    shown = redacted(cfg)
    assert shown["mlflow"]["tracking_uri"] == "https://ops:***@mlflow.example:5000"
    assert "hunter2" not in repr(shown)
    with pytest.raises(ConfigError) as err:
        load_config(environ={"FLYWHEEL__MLFLOW__TRACKING_URI": "https://u:hunter2@h", "FLYWHEEL__ISO3DO__SEED": "x"})
    assert "hunter2" not in str(err.value)
