"""Model versions: checkpoints in the MLflow model registry, and model references resolved
back to local checkpoint files.

A model reference is ``models:/NAME@ALIAS`` (e.g. ``models:/sam3d@champion``),
``models:/NAME/VERSION``, or a path to a checkpoint file. Resolving one gives the local
file, a label for provenance (``NAME/VERSION``, or ``file:<sha256 prefix>``) and the
checkpoint's sha256. Downloads are cached in the state folder by digest.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flywheel.core.config import FlywheelConfig
from flywheel.core.digests import file_digest
from flywheel.core.records import ModelRef
from flywheel.tracking.experiment import configure

CHECKPOINT_FILE = "model.pt"


class ModelNotFound(LookupError):
    """A model reference that names no checkpoint; the message says which and why."""


class RegistryUnreachable(ConnectionError):
    """The MLflow tracking server behind the registry did not answer."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # as given
    label: str  # NAME/VERSION, or file:<digest prefix>
    path: Path  # local checkpoint file
    sha256: str


def _client(cfg: FlywheelConfig):
    from mlflow import MlflowClient

    configure(cfg)
    return MlflowClient()


def register_checkpoint(
    cfg: FlywheelConfig,
    path: str | Path,
    *,
    run_id: str,
    name: str,
    aliases: tuple[str, ...] = (),
    tags: dict | None = None,
    metadata: dict | None = None,
    description: str = "",
) -> ResolvedModel:
    """Log ``path`` in run ``run_id`` as an MLflow Model (:mod:`flywheel.tracking.pyfunc`:
    ``mlflow.pyfunc.load_model`` works on it; ``metadata`` in its MLmodel) and register it as
    a new version of ``name`` (created if needed) with ``tags``, ``description`` and optional
    aliases (e.g. ``champion``)."""
    import mlflow

    from flywheel.tracking.pyfunc import log_pyfunc

    client = _client(cfg)
    digest = file_digest(path)
    with tempfile.TemporaryDirectory() as tmp:  # the artifact has one fixed file name
        staged = Path(tmp) / CHECKPOINT_FILE
        shutil.copyfile(path, staged)
        active = mlflow.active_run()
        with mlflow.start_run(run_id=run_id, nested=active is not None and active.info.run_id != run_id):
            model_uri = log_pyfunc(staged, {**(metadata or {}), "checkpoint_sha256": digest})
    version = mlflow.register_model(model_uri, name, tags={"checkpoint_sha256": digest, **(tags or {})})
    if description:
        client.update_model_version(name, version.version, description=description)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return ResolvedModel(f"models:/{name}/{version.version}", f"{name}/{version.version}", Path(path), digest)


def _checkpoint_in(folder: Path) -> Path:
    """The checkpoint file of a downloaded model version: an MLflow Model's artifact, or (a
    version registered before models were MLflow Models) the folder's one file."""
    for candidate in (folder / "artifacts" / CHECKPOINT_FILE, folder / CHECKPOINT_FILE):
        if candidate.is_file():
            return candidate
    raise ModelNotFound(f"model version at {folder}: no {CHECKPOINT_FILE} in it")


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def resolve_model(cfg: FlywheelConfig, ref: str) -> ResolvedModel:
    """The checkpoint file behind a model reference (see the module docstring)."""
    match = _MODELS_URI.match(ref)
    if match is None:
        if ref.startswith("models:/"):
            raise ModelNotFound(f"model {ref!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
        path = Path(ref)
        if not path.is_file():
            raise ModelNotFound(f"model {ref!r}: no such checkpoint file")
        digest = file_digest(path)
        return ResolvedModel(ref, f"file:{digest[:12]}", path, digest)

    from mlflow.exceptions import MlflowException

    name, alias, number = match["name"], match["alias"], match["version"]
    try:
        client = _client(cfg)
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "INVALID_PARAMETER_VALUE" in str(e.error_code):
            raise ModelNotFound(
                f"model {ref!r}: not in the registry at {cfg.mlflow_tracking_uri} ({e.message.splitlines()[0]})"
            ) from None
        raise RegistryUnreachable(
            f"model {ref!r}: registry at {cfg.mlflow_tracking_uri} failed: {e.message.splitlines()[0]}"
        ) from None
    except (ConnectionError, OSError) as e:
        raise RegistryUnreachable(f"model {ref!r}: registry at {cfg.mlflow_tracking_uri} unreachable: {e}") from None
    digest = version.tags.get("checkpoint_sha256", "")
    cache = cfg.state_dir / "models" / f"{digest or name + '-' + version.version}.pt"
    if not cache.is_file():
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            folder = mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(name, version.version), dst_path=tmp
            )
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_checkpoint_in(Path(folder)), cache.with_suffix(".tmp"))
            cache.with_suffix(".tmp").replace(cache)
    if digest and file_digest(cache) != digest:
        cache.unlink()
        raise ModelNotFound(f"model {ref!r}: downloaded checkpoint does not match its registered sha256")
    return ResolvedModel(ref, f"{name}/{version.version}", cache, digest or file_digest(cache))


def find_version(cfg: FlywheelConfig, name: str, sha256: str) -> ModelRef | None:
    """The first version of ``name`` registered for the checkpoint with this sha256, if any:
    a checkpoint is registered once, however often its registering task runs."""
    found = [
        v for v in _client(cfg).search_model_versions(f"name = '{name}'") if v.tags.get("checkpoint_sha256") == sha256
    ]
    if not found:
        return None
    version = min(int(v.version) for v in found)
    return ModelRef(name=name, version=version, uri=f"models:/{name}/{version}", sha256=sha256)


def set_alias(cfg: FlywheelConfig, model: ModelRef, alias: str) -> None:
    _client(cfg).set_registered_model_alias(model.name, alias, str(model.version))


def describe_version(cfg: FlywheelConfig, model: ModelRef, text: str) -> None:
    """Add ``text`` (a round's decision and metrics) to a model version's description, once."""
    client = _client(cfg)
    current = client.get_model_version(model.name, str(model.version)).description or ""
    if text not in current:
        client.update_model_version(model.name, str(model.version), description=f"{current}\n\n{text}".strip())
