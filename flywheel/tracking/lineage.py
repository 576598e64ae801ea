"""Lineage over MLflow: a round is a parent run, each stage a nested run, every dataset a
logged input (context ``input`` when consumed, ``output`` when produced).

Run ids are passed explicitly, never taken from MLflow's thread-local "active run", so
stages that an orchestrator runs in worker threads or processes attach to the right parent.
A re-run of an unfinished round resumes its parent run instead of starting a second one.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flywheel.core.config import FlywheelConfig
from flywheel.core.records import DatasetRef
from flywheel.tracking.experiment import configure

log = logging.getLogger(__name__)

ROUND_TAG = "flywheel.round"
STAGE_TAG = "flywheel.stage"
FLOW_RUN_TAG = "prefect.flow_run_id"
TASK_RUN_TAG = "prefect.task_run_id"
ATTEMPT_TAG = "flywheel.attempt"  # 1, 2, ...: which attempt at its stage in its round a stage run was
CONTEXT_TAG = "mlflow.data.context"  # MLflow's own key for an input's context


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def start_round(
    cfg: FlywheelConfig, round_id: str, *, params: dict | None = None, flow_run_id: str | None = None
) -> str:
    """The parent run of ``round_id``: the newest unfinished one is resumed, else a new one."""
    experiment_id = configure(cfg)
    client = _client()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROUND_TAG}` = '{round_id}' and tags.`{STAGE_TAG}` = 'round'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs and runs[0].info.status in ("RUNNING", "FAILED", "KILLED", "SCHEDULED"):
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "flywheel.resumed", "true")
        log.info("resuming MLflow run %s of round %s", run_id, round_id)
    else:
        tags = {ROUND_TAG: round_id, STAGE_TAG: "round"}
        if flow_run_id:
            tags[FLOW_RUN_TAG] = flow_run_id
        run_id = client.create_run(experiment_id, run_name=round_id, tags=tags).info.run_id
        from mlflow.entities import Param

        flat = config_params(params or {})
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 params per call
            client.log_batch(run_id, params=[Param(k, v) for k, v in list(flat.items())[start : start + 100]])
    return run_id


def config_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys (``model.sft.steps``), values as text
    (lists and empty dicts as JSON, cut to MLflow's 500 characters)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(config_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:500]
    return out


def end_round(run_id: str, *, failed: bool = False) -> None:
    _client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


@contextmanager
def stage_run(
    cfg: FlywheelConfig,
    parent_run_id: str | None,
    stage: str,
    *,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    params: dict | None = None,
) -> Iterator[str]:
    """A nested run for one stage, open for the block; FAILED if the block raises.

    Inside it, the fluent ``mlflow.log_*`` calls go to this stage's run."""
    import mlflow

    configure(cfg)
    tags = {STAGE_TAG: stage}
    if flow_run_id:
        tags[FLOW_RUN_TAG] = flow_run_id
    if task_run_id:
        tags[TASK_RUN_TAG] = task_run_id
    if parent_run_id:
        round_tag = _client().get_run(parent_run_id).data.tags.get(ROUND_TAG)
        if round_tag:
            tags[ROUND_TAG] = round_tag
    if parent_run_id:
        tags[ATTEMPT_TAG] = str(_supersede_earlier_attempts(parent_run_id, stage))
    with mlflow.start_run(run_name=stage, parent_run_id=parent_run_id, nested=bool(parent_run_id), tags=tags) as run:
        if params:
            mlflow.log_params(params)
        yield run.info.run_id


def _supersede_earlier_attempts(parent_run_id: str, stage: str) -> int:
    """This stage's attempt number under the round (1 for the first); an earlier attempt
    still RUNNING was killed with its process (one round runs at a time), so it is marked
    KILLED: a re-run round shows one live run per stage, and every attempt says which it was."""
    client = _client()
    experiment = client.get_run(parent_run_id).info.experiment_id
    earlier = client.search_runs(
        [experiment],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{STAGE_TAG}` = '{stage}'",
    )
    for run in earlier:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "flywheel.superseded", "killed before it ended; a later attempt re-ran it")
            client.set_terminated(run.info.run_id, status="KILLED")
    return len(earlier) + 1


def log_dataset(run_id: str, ref: DatasetRef, context: str, flow_run_id: str | None = None) -> None:
    """Record that run ``run_id`` consumed (``input``) or produced (``output``) ``ref``."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    if context not in ("input", "output"):
        raise ValueError(f"context must be 'input' or 'output', not {context!r}")
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the same
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(ref.uri)
    schema = dataset_schema(ref.name)

    class ProfiledDataset(MetaDataset):
        def to_dict(self) -> dict[str, str]:  # MetaDataset has no profile; the MLflow UI shows this one
            profile = {"num_rows": ref.num_rows, "num_columns": len(schema.inputs) if schema else None}
            return {**super().to_dict(), "profile": json.dumps(profile)}

    dataset = ProfiledDataset(source=source, name=ref.name, digest=ref.version, schema=schema)  # type: ignore[abstract]  # concrete at run time
    tags = [
        InputTag(CONTEXT_TAG, context),
        InputTag("flywheel.num_rows", str(ref.num_rows)),
        InputTag("flywheel.content_digest", ref.digest),
        InputTag("flywheel.uri", ref.uri),
    ]
    if flow_run_id:
        tags.append(InputTag(FLOW_RUN_TAG, flow_run_id))
    client = _client()
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])
    # Plain tags as well: searchable with `tags.dataset.<name> = '<version>'` in the UI.
    client.set_tag(run_id, f"dataset.{context}.{ref.name}", ref.version)


def dataset_schema(kind: str):
    """A dataset kind's manifest schema (:mod:`flywheel.core.contracts`, defined once) as an
    MLflow schema; None for a kind this code does not know."""
    import pyarrow as pa
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    from flywheel.core.contracts import get_spec

    def mlflow_type(t: pa.DataType):
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return Array(mlflow_type(t.value_type))
        for test, kind in (
            (pa.types.is_boolean, DataType.boolean),
            (pa.types.is_int64, DataType.long),
            (pa.types.is_integer, DataType.integer),
            (pa.types.is_float32, DataType.float),
            (pa.types.is_floating, DataType.double),
            (pa.types.is_binary, DataType.binary),
            (pa.types.is_timestamp, DataType.datetime),
        ):
            if test(t):
                return kind
        return DataType.string  # strings, and anything richer shown as text

    try:
        spec = get_spec(kind)
    except KeyError:
        return None
    return Schema([ColSpec(mlflow_type(f.type), f.name, required=not f.nullable) for f in spec.manifest_schema])


def run_datasets(run_id: str) -> list[dict]:
    """The datasets a run logged: name, version, context, rows, uri (for people and tests)."""
    run = _client().get_run(run_id)
    out = []
    for di in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        out.append(
            {
                "name": di.dataset.name,
                "version": di.dataset.digest,
                "context": tags.get(CONTEXT_TAG),
                "num_rows": int(tags.get("flywheel.num_rows", -1)),
                "uri": tags.get("flywheel.uri"),
                "flow_run_id": tags.get(FLOW_RUN_TAG),
            }
        )
    return out


def training_run(cfg: FlywheelConfig, checkpoint_uri: str) -> str | None:
    """The stage run that trained the checkpoint at ``checkpoint_uri`` (its ``checkpoint``
    tag; the first finished one: a cached re-run of the stage tags the same checkpoint)."""
    experiment = configure(cfg)
    quoted = checkpoint_uri.replace("'", "\\'")
    runs = _client().search_runs(
        [experiment],
        filter_string=f"tags.checkpoint = '{quoted}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def stage_runs(parent_run_id: str) -> list:
    """Nested stage runs of a round, oldest first."""
    parent = _client().get_run(parent_run_id)
    return _client().search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )


def run_pictures(parent_run_id: str) -> list[tuple[Any, str]]:
    """The images (PNG) a round run and its stage runs logged, as (run, artifact path), the
    round's own first, then by stage in order; Data Docs and logged models aside."""
    client = _client()

    def pngs(run_id: str, folder: str | None = None) -> list[str]:
        out = []
        for item in client.list_artifacts(run_id, folder):
            if item.is_dir and item.path.split("/")[-1] not in ("data_docs", "model"):
                out += pngs(run_id, item.path)
            elif item.path.endswith(".png"):
                out.append(item.path)
        return out

    runs = [client.get_run(parent_run_id), *stage_runs(parent_run_id)]
    return [(run, path) for run in runs for path in pngs(run.info.run_id)]


def model_tree(cfg: FlywheelConfig, ref: str) -> list[str]:
    """The lineage of a registered model as printable lines: the model version, the model it
    was warm-started from (recursively), and each dataset that made it with the datasets it
    was made from (rankings -> candidates -> image pool -> renders -> meshes). ``ref``:
    ``NAME@ALIAS``, ``NAME@VERSION``, ``NAME/VERSION`` or a ``models:/`` URI."""
    from mlflow import MlflowClient

    from flywheel.core.datasets import Dataset, DatasetNotCommitted
    from flywheel.core.store import open_store
    from flywheel.tracking.registry import ModelNotFound

    configure(cfg)
    client = MlflowClient()
    store = open_store(cfg.store_root, cfg.store)
    lines: list[str] = []
    shown: set[str] = set()

    def version_of(text: str):
        name, sep, which = text.removeprefix("models:/").replace("/", "@", 1).partition("@")
        which = which if sep else "champion"
        try:
            return (
                client.get_model_version(name, which)
                if which.isdigit()
                else client.get_model_version_by_alias(name, which)
            )
        except Exception as e:  # MlflowException: unknown name, version or alias
            raise ModelNotFound(
                f"model {text!r}: not in the registry at {cfg.mlflow_tracking_uri} ({str(e).splitlines()[0]})"
            ) from None

    def dataset(spec: str, prefix: str, role: str = "") -> None:
        name, _, version = spec.partition("@")
        label = f"{role}: " if role else ""
        if spec in shown:
            lines.append(f"{prefix}{label}{spec} (see above)")
            return
        shown.add(spec)
        try:
            ds = Dataset(store, name, version)
            marker = ds.marker
        except DatasetNotCommitted:
            lines.append(f"{prefix}{label}{spec}  MISSING from {cfg.store_root}")
            return
        lines.append(f"{prefix}{label}{spec}  {ds.ref.num_rows} rows  {ds.ref.uri}")
        for parent in marker.get("parents", []):
            dataset(f"{parent['name']}@{parent['version']}", prefix + "    ")

    def model(version, prefix: str) -> None:
        tags = version.tags
        lines.append(
            f"{prefix}model {version.name}/{version.version}  round {tags.get('flywheel.round', '?')}  "
            f"stages {tags.get('flywheel.stages', '?')}  sha256 {tags.get('checkpoint_sha256', '?')[:12]}  "
            f"run {version.run_id}"
        )
        inner = prefix + "    "
        for key in sorted(k for k in tags if k.startswith("dataset.")):
            for spec in filter(None, tags[key].split(",")):
                dataset(spec, inner, key.removeprefix("dataset."))
        warm = tags.get("flywheel.warm_start")
        if warm:
            lines.append(f"{inner}warm start:")
            model(version_of(warm), inner + "    ")

    model(version_of(ref), "")
    return lines
