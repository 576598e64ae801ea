"""``flywheel``: the command line for people. Later stages add their subcommands here.

Exit codes: 0 success; 1 the job failed; 2 bad usage or configuration; 3 the store cannot
be used (credentials, bucket, network); 4 a dataset or version does not exist or is not
committed.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from pydantic import ValidationError

from flywheel.core.config import CONFIG_FILE_ENV, WEB_MODULES, ConfigError, FlywheelConfig, load_config, redacted
from flywheel.core.records import RunSummary
from flywheel.learning.architecture import model_architecture

EXIT_FAILED, EXIT_USAGE, EXIT_STORE, EXIT_NOT_FOUND = 1, 2, 3, 4

app = typer.Typer(
    help="sam3d-flywheel: a data flywheel for single-image 3D reconstruction.",
    epilog="Exit codes: 0 ok, 1 job failed, 2 bad usage/config, 3 store unusable, 4 dataset not found/not committed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
datasets_app = typer.Typer(help="List, inspect, verify and clean versioned datasets.", no_args_is_help=True)
store_app = typer.Typer(help="Check the configured object store.", no_args_is_help=True)
synth_app = typer.Typer(
    help="Synthetic data: mesh library, Iso-3DO renders, Flying Occlusions. "
    "Sizes and settings come from the config (see `flywheel config show`).",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
app.add_typer(datasets_app, name="datasets")
app.add_typer(store_app, name="store")
app.add_typer(synth_app, name="synth")
stack_app = typer.Typer(
    help="A local production-like stack on loopback: S3 (SeaweedFS), MLflow server, Prefect server, Ray head + worker.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
rankings_app = typer.Typer(
    help="Human (or simulated) rankings of candidates: ingest exports, report.", no_args_is_help=True
)
app.add_typer(rankings_app, name="rankings")
annotate_app = typer.Typer(
    help="Annotation: the project's own app (serve, users, export) where annotators rank candidates in 3D; "
    "or a Label Studio server (publish a candidates version, pull its annotations; URL from the config, "
    "annotation.label_studio_url, API token from $LABEL_STUDIO_API_KEY).",
    no_args_is_help=True,
)
app.add_typer(annotate_app, name="annotate")
users_app = typer.Typer(help="Accounts of the annotation app.", no_args_is_help=True)
annotate_app.add_typer(users_app, name="users")
artists_app = typer.Typer(
    help="Hard cases queued for 3D artists and what they delivered (config `artists`; layout: "
    "artists/<series>/README.md in the store).",
    no_args_is_help=True,
)
app.add_typer(artists_app, name="artists")


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.callback()
def main(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        metavar="FILE",
        help=f"YAML config over configs/default.yaml (also: ${CONFIG_FILE_ENV}). "
        "Env FLYWHEEL__SECTION__FIELD overrides any field.",
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Print tracebacks in the terminal (default: in a log file under the state folder)."
    ),
) -> None:
    """Load the config once; every command and the flows it runs get this one."""
    try:
        cfg = load_config(config)
        model_architecture(cfg.model)  # a bad model override fails here, named, not mid-round
    except ConfigError as e:
        _fail(str(e), EXIT_USAGE)
    ctx.obj = cfg


def _cfg(ctx: typer.Context) -> FlywheelConfig:
    """The config :func:`main` loaded for this command."""
    cfg = ctx.find_root().obj
    assert isinstance(cfg, FlywheelConfig)
    return cfg


def _store(cfg: FlywheelConfig):
    from flywheel.core.store import StoreError, open_store

    store = open_store(cfg.store_root, cfg.store)
    try:
        store.check()
    except StoreError as e:
        _fail(str(e), EXIT_STORE)
    return store


@config_app.command("show")
def config_show(ctx: typer.Context, fmt: str = typer.Option("yaml", "--format", "-f", help="yaml or json")) -> None:
    """Print the effective configuration (defaults < files < environment), secrets redacted."""
    data = redacted(_cfg(ctx))
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    elif fmt == "yaml":
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        _fail(f"--format {fmt!r}: choose yaml or json", EXIT_USAGE)


@store_app.command("check")
def store_check(ctx: typer.Context) -> None:
    """Check that the store is reachable, the bucket exists and the credentials work."""
    cfg = _cfg(ctx)
    store = _store(cfg)
    typer.echo(f"ok: {store!r}")


@datasets_app.command("ls")
def datasets_ls(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Only this dataset kind."),
    everything: bool = typer.Option(False, "--all", help="Also the stages' internal kinds (cached parts)."),
) -> None:
    """List committed datasets: versions, the newest commit, and the version the configured
    series' latest committed round used (what a model was trained and judged on; the newest
    commit may be another library, e.g. a held-out set's)."""
    from flywheel.core.contracts import get_spec
    from flywheel.core.datasets import list_datasets, list_versions
    from flywheel.rounds import ledger

    cfg = _cfg(ctx)
    store = _store(cfg)
    if name:
        try:
            get_spec(name)
        except KeyError as e:
            _fail(str(e), EXIT_NOT_FOUND)
    names = [name] if name else [n for n in list_datasets(store) if everything or not _internal(n)]
    if not names:
        typer.echo(f"no datasets in {store.root_uri}")
        return
    series = ledger.series_id(cfg)
    rounds = ledger.committed_rounds(store, series)
    used: dict[str, set[str]] = {}
    for ref in rounds[-1].datasets.values() if rounds else ():
        used.setdefault(ref.name, set()).add(ref.version)
    in_round = f"ROUND {rounds[-1].round} USED" if rounds else "ROUND USED"
    typer.echo(f"{'NAME':<22} {'VERSIONS':>8}  {'NEWEST':<16} {'ROWS':>8}  {'COMMITTED':<32} {in_round}")
    for ds in names:
        versions = list_versions(store, ds)
        if not versions:
            typer.echo(f"{ds:<22} {0:>8}  {'-':<16} {'-':>8}  (nothing committed)")
            continue
        last = versions[-1]
        rows = {v["version"]: v["num_rows"] for v in versions}
        uses = ", ".join(f"{v} ({rows.get(v, '?')} rows)" for v in sorted(used.get(ds, ()))) or "-"
        typer.echo(
            f"{ds:<22} {len(versions):>8}  {last['version']:<16} {last['num_rows']:>8}  {last['committed_at']:<32} {uses}"
        )
    if rounds:
        typer.echo(f"(series {series}: {len(rounds)} committed round(s); `flywheel rounds` for each)")
    else:
        typer.echo(f"(series {series} of this config has no committed round yet)")


def _internal(kind: str) -> bool:
    from flywheel.core.contracts import get_spec

    try:
        return get_spec(kind).internal
    except KeyError:  # a folder of a kind this code does not know: show it
        return False


@datasets_app.command("show")
def datasets_show(
    ctx: typer.Context,
    spec: str = typer.Argument(..., metavar="NAME[@VERSION]", help="Latest version if omitted."),
    rows: int = typer.Option(5, "--rows", "-n", help="Manifest rows to print."),
    verify: bool = typer.Option(
        False, "--verify", help="Check every shard's checksum and that shards and manifest agree (reads all shards)."
    ),
) -> None:
    """Show one dataset version: lineage, shards, schema and the first manifest rows."""
    from flywheel.core.contracts import get_spec
    from flywheel.core.datasets import Dataset, DatasetError, InvalidVersion

    store = _store(_cfg(ctx))
    try:
        get_spec(spec.partition("@")[0])
        ds = Dataset.open(store, spec)
    except InvalidVersion as e:
        _fail(str(e), EXIT_USAGE)
    except (KeyError, DatasetError) as e:
        _fail(str(e), EXIT_NOT_FOUND)
    m = ds.marker
    typer.echo(f"{ds.ref}  rows={m['num_rows']}  committed={m['committed_at']}")
    typer.echo(f"  uri:     {ds.ref.uri}")
    typer.echo(f"  digest:  {m['digest']}")
    typer.echo(f"  inputs:  {json.dumps(m['inputs'], sort_keys=True)}")
    for parent in m["parents"]:
        typer.echo(f"  parent:  {parent['name']}@{parent['version']}")
    total = sum(s["bytes"] for s in m["shards"])
    typer.echo(f"  shards:  {len(m['shards'])} ({total / 2**20:.2f} MiB); files per sample: {', '.join(ds.spec.files)}")
    quarantine = m.get("quarantine") or {"rows": 0, "by_reason": {}}
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(quarantine["by_reason"].items()))
    typer.echo(f"  quarantined: {quarantine['rows']}" + (f" ({reasons})" if reasons else ""))
    warnings = m.get("warnings") or {"rows": 0, "by_reason": {}, "items": []}
    if warnings["rows"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(warnings["by_reason"].items()))
        typer.echo(f"  warnings: {warnings['rows']} ({reasons})")
        for item in warnings["items"][: max(rows, 5)]:
            typer.echo(f"    {item['item_id']}: {item['detail']}")
    if quarantine["rows"] and rows > 0:
        for item in ds.quarantine().slice(0, rows).to_pylist():
            typer.echo(f"    {item['kind']} {item['item_id']}: {item['detail']}")
    typer.echo("  schema:")
    for field in ds.spec.schema:
        typer.echo(f"    {field.name}: {field.type}")
    if rows > 0:
        typer.echo(ds.manifest().slice(0, rows).to_pandas().to_string(max_colwidth=40))
    if verify:
        problems = ds.verify()
        if problems:
            for p in problems:
                typer.secho(f"  corrupt: {p}", fg=typer.colors.RED, err=True)
            raise typer.Exit(EXIT_FAILED)
        typer.echo("verify: ok (all shards match their checksums and the manifest)")


@datasets_app.command("repair")
def datasets_repair(
    ctx: typer.Context,
    spec: str = typer.Argument(..., metavar="NAME@VERSION"),
    force: bool = typer.Option(False, "--force", help="Remove the version even when it verifies intact."),
) -> None:
    """Remove a damaged dataset version so that re-running the flow that made it rebuilds it
    from its inputs (cached task results that refer to it then run again). Verifies first and
    removes nothing when the version is intact (unless --force). Exit 0: removed, or intact;
    2: bad NAME@VERSION; 3: store unusable; 4: no such committed version."""
    from flywheel.core.contracts import get_spec
    from flywheel.core.datasets import Dataset, DatasetError, InvalidVersion, remove_version

    name, _, version = spec.partition("@")
    if not version:
        _fail(f"{spec}: name the version to repair, NAME@VERSION (`flywheel datasets ls {name}`)", EXIT_USAGE)
    store = _store(_cfg(ctx))
    try:
        get_spec(name)
        ds = Dataset(store, name, version)
    except InvalidVersion as e:
        _fail(str(e), EXIT_USAGE)
    except (KeyError, DatasetError) as e:
        _fail(str(e), EXIT_NOT_FOUND)
    problems = ds.verify()
    for p in problems:
        typer.secho(f"  corrupt: {p}", fg=typer.colors.RED, err=True)
    if not problems and not force:
        typer.echo(f"{ds.ref}: intact (every shard matches its checksum and the manifest); nothing removed")
        return
    removed = remove_version(store, name, version)
    typer.echo(f"removed {ds.ref} ({removed} objects{', intact: --force' if not problems else ''})")
    typer.echo(
        "rebuild it: re-run the flow that made it (`flywheel synth ...` for synthetic data, `flywheel run` for a "
        "round's datasets); its producing task runs again and commits the same version from its inputs"
    )


@datasets_app.command("gc")
def datasets_gc(
    ctx: typer.Context,
    older_than_hours: float | None = typer.Option(
        None, help="Age of uncommitted attempts to remove (default: datasets.stale_attempt_hours)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
) -> None:
    """Remove debris of crashed or abandoned writes (never a committed version)."""
    from flywheel.core.datasets import collect_garbage

    cfg = _cfg(ctx)
    store = _store(cfg)
    hours = cfg.datasets.stale_attempt_hours if older_than_hours is None else older_than_hours
    removed = collect_garbage(store, older_than_hours=hours, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for prefix in removed:
        typer.echo(f"{verb} {store.uri(prefix)}")
    typer.echo(f"{verb} {len(removed)} uncommitted attempt(s) older than {hours} h")


@stack_app.command("up")
def stack_up(
    ctx: typer.Context,
    database_url: str | None = typer.Option(
        None, help="PostgreSQL URL for the Prefect server (postgresql+asyncpg://...); default SQLite."
    ),
    ray_cpus: int = typer.Option(1, help="CPUs of each Ray node (head and worker)."),
) -> None:
    """Start the stack and write .flywheel/stack/flywheel.yaml, the config that uses it."""
    from flywheel.ops import stack

    cfg = _cfg(ctx)
    try:
        stack.up(cfg, database_url=database_url, ray_cpus=ray_cpus, log=typer.echo)
    except stack.StackError as e:
        _fail(str(e), EXIT_FAILED)
    _print_status(stack.status(cfg))
    typer.echo(f"\nrun on it:  flywheel --config {stack.paths(cfg).config} synth all")


@stack_app.command("down")
def stack_down(ctx: typer.Context) -> None:
    """Stop what `flywheel stack up` started (and nothing else)."""
    from flywheel.ops import stack

    stopped = stack.down(_cfg(ctx), log=typer.echo)
    typer.echo(f"stopped {len(stopped)} service(s)" if stopped else "nothing was running")


def _print_status(services: dict) -> bool:
    for name, svc in services.items():
        mark = "ok  " if svc["healthy"] else "DOWN"
        typer.echo(f"  {mark} {name:<11} {svc.get('url', ''):<32} {svc['message'] if not svc['healthy'] else ''}")
    return all(s["healthy"] for s in services.values())


@stack_app.command("status")
def stack_status(ctx: typer.Context) -> None:
    """Health of each service (exit 1 if any is down)."""
    from flywheel.ops import stack

    if not _print_status(stack.status(_cfg(ctx))):
        raise typer.Exit(EXIT_FAILED)


@stack_app.command("env")
def stack_env(ctx: typer.Context) -> None:
    """Shell exports for tools outside flywheel (prefect, mlflow, ray CLIs) to use the stack."""
    from flywheel.ops import stack

    cfg = _cfg(ctx)
    state, p = stack.read_state(cfg), stack.paths(cfg)
    if not state:
        _fail("the stack is not up (flywheel stack up)", EXIT_FAILED)
    svc = state["services"]
    for key, value in {
        "FLYWHEEL_CONFIG": p.config,
        "PREFECT_API_URL": svc["prefect"]["url"],
        "MLFLOW_TRACKING_URI": svc["mlflow"]["url"],
        "RAY_ADDRESS": svc["ray-head"]["url"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": p.ray_token,
        "AWS_SHARED_CREDENTIALS_FILE": p.credentials,
        "AWS_PROFILE": stack.PROFILE,
        "AWS_ENDPOINT_URL_S3": svc["s3"]["url"],
    }.items():
        typer.echo(f"export {key}={value}")


@stack_app.command("alerts")
def stack_alerts(
    ctx: typer.Context,
    webhook: str = typer.Option(..., metavar="URL", help="Where notifications are POSTed (JSON subject + text)."),
    round_minutes: float = typer.Option(
        120.0, metavar="MINUTES", min=0.2, help="A round still running this long after it started raises an alert."
    ),
) -> None:
    """Declare the ops alerts on the Prefect server (PREFECT_API_URL or prefect.api_url): a
    failed or crashed round, a failed validation gate and a late round notify WEBHOOK.
    Re-running replaces them."""
    from datetime import timedelta

    from flywheel.core.runtime import apply_environment

    apply_environment(_cfg(ctx))
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        _fail(
            "alerts: no Prefect server; set PREFECT_API_URL or prefect.api_url (a temporary one forgets them)",
            EXIT_USAGE,
        )
    from flows.alerts import BLOCK_NAME, declare_alerts

    try:
        names = declare_alerts(webhook, timedelta(minutes=round_minutes))
    except Exception as e:  # the server refused or is not there
        _fail(f"alerts: the Prefect server did not take them: {type(e).__name__}: {e}", EXIT_FAILED)
    for name in names:
        typer.echo(f"automation: {name}")
    typer.echo(f"notifications go to {webhook} (notification block {BLOCK_NAME})")


@app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    spec: str = typer.Argument(..., metavar="NAME[@VERSION]", help="Latest version if omitted."),
    docs: str | None = typer.Option(
        None,
        "--docs",
        metavar="DIR",
        help="Build Great Expectations' "
        "HTML Data Docs into DIR (open DIR/gx/uncommitted/data_docs/local_site/index.html).",
    ),
    json_out: str | None = typer.Option(None, "--json", metavar="FILE", help="Write the full results as JSON."),
) -> None:
    """Validate a dataset version with its Great Expectations suite (exit 1 if it fails)."""
    from flywheel.core.contracts import get_spec
    from flywheel.core.datasets import Dataset, DatasetError, InvalidVersion
    from flywheel.validation.suites import validate, write_json

    cfg = _cfg(ctx)
    store = _store(cfg)
    try:
        get_spec(spec.partition("@")[0])
        ds = Dataset.open(store, spec)
    except InvalidVersion as e:
        _fail(str(e), EXIT_USAGE)
    except (KeyError, DatasetError) as e:
        _fail(str(e), EXIT_NOT_FOUND)
    report = validate(ds, cfg.validation, docs_dir=docs)
    typer.echo(report.summary())
    if json_out:
        write_json(report, json_out)
    if report.docs:
        typer.echo(f"data docs: {report.docs}")
    if not report.success:
        raise typer.Exit(EXIT_FAILED)


def _run_flow(ctx: typer.Context, flow_name: str, cfg: FlywheelConfig | None = None, **parameters: Any) -> Any:
    """Run one of the flows in this process with the loaded config (``cfg``: a variation of
    it); an ephemeral Prefect server starts if needed. Prints what a data flow committed and
    returns the flow's result."""
    cfg = cfg or _cfg(ctx)
    _store(cfg)
    from flywheel.core.runtime import apply_environment

    apply_environment(cfg)  # before Prefect is imported: it reads its settings then
    started = datetime.now()
    import importlib

    module, _, name = flow_name.partition(":")
    flow = getattr(importlib.import_module(module), name)  # imports Prefect: only when a flow runs
    from tasks.conventions import prepare_state

    prepare_state(cfg)
    traceback_log = cfg.state_dir / "logs" / f"{name}-{started:%Y%m%dT%H%M%S}-tracebacks.log"
    if not ctx.find_root().params.get("debug"):
        from flywheel.core.runtime import tracebacks_to_file

        traceback_log.parent.mkdir(parents=True, exist_ok=True)
        tracebacks_to_file(traceback_log)
    try:
        result = flow(config=cfg, **parameters)
    except Exception as e:
        where = f" (tracebacks: {traceback_log})" if traceback_log.exists() else ""
        _fail(f"{flow.name} failed: {type(e).__name__}: {e}{where}", EXIT_FAILED)
    seconds = (datetime.now() - started).total_seconds()
    if isinstance(result, RunSummary):
        typer.echo(f"\n{result.run} done in {seconds:.0f} s")
        for ds in result.datasets:
            typer.echo(f"  {ds}: {ds.num_rows} rows  {ds.uri}")
        typer.echo(f"  MLflow run {result.mlflow_run_id} in {cfg.mlflow_tracking_uri}")
        typer.echo(f"  look: mlflow ui --backend-store-uri {cfg.mlflow_tracking_uri}")
    else:
        typer.echo(f"\ndone in {seconds:.0f} s")
    return result


@app.command("run")
def run(
    ctx: typer.Context,
    rounds: int = typer.Option(
        1,
        "--rounds",
        min=1,
        help="Rounds to run: 0..N-1 (committed ones are read back, not re-run). The demo is 1; the longer demo 3.",
    ),
    propose_only: bool = typer.Option(
        False, "--propose-only", help="Only the propose half of the next round: candidates for people to judge."
    ),
    exports: list[str] = typer.Option(
        [],
        "--exports",
        help="Close the next round with these judgements (native or Label Studio exports, e.g. `flywheel "
        "annotate export`'s) instead of simulated annotators; repeatable.",
    ),
) -> None:
    """Run flywheel rounds on the configured sizes: round 0 first bootstraps a champion from
    synthetic data; each round proposes candidates for new images, has simulated annotators
    rank them, retrains (SFT, DPO), evaluates on the held-out set and promotes or keeps the
    champion. With people: `--propose-only`, then the annotation app (`flywheel annotate
    serve`, `export`), then `--exports FILE` closes that round. A Prefect flow; lineage in MLflow."""
    cfg = _cfg(ctx)
    if propose_only and exports:
        _fail("--propose-only and --exports: choose one", EXIT_USAGE)
    if propose_only:
        summary = _run_flow(ctx, "flows.round:round_propose")
        candidates = next((d for d in getattr(summary, "datasets", []) if d.name == "candidates"), None)
        if candidates is None:  # the round was committed already
            typer.echo(f"the next round is committed already: {summary.promotion.reason}")
            return
        typer.echo(
            f"candidates to judge: {candidates}; next: flywheel annotate serve --candidates {candidates.version}"
        )
        return
    if exports:
        records = [_run_flow(ctx, "flows.round:flywheel_round", files=exports)]
    else:
        records = _run_flow(ctx, "flows.round:flywheel_rounds", rounds_to_run=rounds)
    last = records[-1]
    store = cfg.store_root
    typer.echo(
        f"\nchampion: {last.champion_after.uri} (round {last.round} "
        f"{'promoted its challenger' if last.promotion.promote else 'kept it'})"
    )
    typer.echo(f"  round records:  {store}/rounds/{last.series}/")
    typer.echo("  datasets:       flywheel datasets ls")
    typer.echo(f"  lineage:        flywheel lineage models:/{cfg.candidates.registered_model}@champion")
    typer.echo(f"  annotation:     {store}/annotation/{last.datasets['candidates'].version}/sheets/")
    typer.echo(
        f"  MLflow UI:      mlflow ui --backend-store-uri {cfg.mlflow_tracking_uri}  "
        f"(experiment {cfg.mlflow.experiment}: runs round-*, summary/rounds_summary.png)"
    )
    typer.echo(f"  Prefect UI:     PREFECT_HOME={cfg.state_dir / 'prefect'} prefect server start")


@app.command("lineage")
def lineage_cmd(
    ctx: typer.Context,
    model: str = typer.Argument("sam3d@champion", help="NAME@ALIAS, NAME@VERSION or a models:/ URI."),
) -> None:
    """Print the tree from a model version back to the datasets that made it: the model it was
    warm-started from, SFT/preference data -> rankings -> candidates -> image pool -> renders -> meshes."""
    cfg = _cfg(ctx)
    _store(cfg)
    from flywheel.tracking.lineage import model_tree
    from flywheel.tracking.registry import ModelNotFound

    try:
        lines = model_tree(cfg, model)
    except ModelNotFound as e:
        _fail(str(e), EXIT_NOT_FOUND)
    typer.echo("\n".join(lines))


@app.command("rounds")
def rounds_cmd(
    ctx: typer.Context,
    round_index: int | None = typer.Option(
        None, "--round", help="Detail this round (default: the latest): every model and baseline, all intervals."
    ),
) -> None:
    """The committed rounds of the configured series: held-out vIoU of the models and baselines,
    the challenger's gain with its 95% interval, accept rate, decision; then one round in detail."""
    cfg = _cfg(ctx)
    store = _store(cfg)
    from flywheel.rounds import ledger as rounds

    series = rounds.series_id(cfg)
    history = rounds.committed_rounds(store, series)
    if not history:
        typer.echo(f"no committed round in series {series} ({cfg.store_root}); run `flywheel run`")
        return
    typer.echo(f"series {series}: {len(history)} round(s)")
    typer.echo(rounds.summary_text(history))
    chosen = history[-1] if round_index is None else next((r for r in history if r.round == round_index), None)
    if chosen is None:
        _fail(f"round {round_index} is not committed in series {series}", EXIT_NOT_FOUND)
    typer.echo("")
    typer.echo(rounds.round_text(chosen))


@app.command("propose")
def propose(
    ctx: typer.Context,
    pool: str | None = typer.Option(
        None,
        help="Image pool: dataset NAME or NAME@VERSION (e.g. occlusions) or a "
        ".jsonl/.csv manifest with image, mask[, object_id]. Default: candidates.pool.",
    ),
    model: list[str] | None = typer.Option(
        None,
        help="KEY=REF, e.g. champion=models:/sam3d@champion or "
        "champion=path/to/model.pt (repeatable). Default: candidates.models.",
    ),
    candidates: int | None = typer.Option(None, "--candidates", "-n", help="Distinct candidates per object (N)."),
) -> None:
    """Propose N candidates per image-pool object with the model ensemble on Ray, render previews
    and publish annotation tasks (native JSONL + Label Studio imports) in the store."""
    cfg = _cfg(ctx)
    section = cfg.candidates.model_dump()
    if pool:
        section["pool"] = pool
    if model:
        pairs = [m.partition("=") for m in model]
        if any(not k or not v for k, _, v in pairs):
            _fail(f"--model needs KEY=REF, got {model}", EXIT_USAGE)
        section["models"] = {k: v for k, _, v in pairs}
    if candidates is not None:
        section["num_candidates"] = candidates
    try:
        chosen = cfg.model_copy(update={"candidates": type(cfg.candidates).model_validate(section)})
    except ValidationError as e:
        _fail(f"invalid option: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}", EXIT_USAGE)
    _run_flow(ctx, "flows.propose:propose", chosen)


@rankings_app.command("ingest")
def rankings_ingest(
    ctx: typer.Context,
    files: list[str] = typer.Argument(
        ...,
        help="Exports: native .jsonl/.csv/.parquet, or Label Studio JSON / JSON_MIN (.json) or CSV (paths or s3:// URIs).",
    ),
    candidates: str | None = typer.Option(
        None, help="Candidates version the judgements are about (default: the newest)."
    ),
    round_index: int = typer.Option(
        ..., "--round", min=0, help="The round (k) these judgements close: picks the acceptance threshold alpha_k."
    ),
    label_config: Path | None = typer.Option(
        None,
        help="Labeling config (XML, from the project's Settings > Labeling Interface > Code) of the Label Studio "
        "project the exports came from; default: the templates `flywheel annotate publish` creates.",
        exists=True,
        dir_okay=False,
    ),
) -> None:
    """Archive the exports as received, check every row (bad rows are quarantined with their
    reason), count each submission once (a later edit of it is a revision), print one line per
    file, and commit the round's SFT, preference (DPO) and hard-case datasets. Re-ingesting a
    file changes nothing. Exit 1 when a gate fails (e.g. an export with no usable judgement)."""
    configs = {f: label_config.read_text() for f in files} if label_config else None
    before = _latest_version(_cfg(ctx), "rankings")
    result = _run_flow(
        ctx,
        "flows.rankings:rankings",
        files=files,
        candidates=candidates,
        round_index=round_index,
        label_configs=configs,
    )
    _print_ingestion(_cfg(ctx), result, files, before)


def _latest_version(cfg: FlywheelConfig, name: str) -> str | None:
    from flywheel.core.datasets import list_versions

    return next((v["version"] for v in list_versions(_store(cfg), name)[-1:]), None)


def _print_ingestion(cfg: FlywheelConfig, result: RunSummary, files: list[str], before: str | None) -> None:
    """One line per export: what the new rankings version took from it, or that every export
    was ingested before (the version ``before`` the run is still the newest)."""
    from flywheel.core.datasets import Dataset
    from flywheel.feedback.ingest import file_lines

    ref = next(d for d in result.datasets if d.name == "rankings")
    typer.echo("exports:")
    for line in file_lines(Dataset(_store(cfg), ref.name, ref.version).marker, files, ref.version != before):
        typer.echo(f"  {line}")


def _candidates_version(cfg: FlywheelConfig, version: str | None) -> str:
    found = version or _latest_version(cfg, "candidates")
    if found is None:
        _fail(f"no candidates in {cfg.store_root}: run `flywheel propose` first", EXIT_NOT_FOUND)
    return str(found)


def _on_label_studio(ctx: typer.Context, candidates: str | None, action) -> tuple[FlywheelConfig, str, Any]:
    """Run ``action(client, store, candidates version, annotation settings)`` against the
    configured Label Studio (token from the environment) -> (config, version, its result).
    No token: exit 2; Label Studio refuses or cannot be reached: exit 1."""
    import os

    from flywheel.feedback.label_studio_api import TOKEN_ENV, LabelStudio, LabelStudioError

    cfg = _cfg(ctx)
    store = _store(cfg)
    version = _candidates_version(cfg, candidates)
    try:
        client = LabelStudio(cfg.annotation.label_studio_url, os.environ.get(TOKEN_ENV, ""))
    except LabelStudioError as e:
        _fail(str(e), EXIT_USAGE)
    try:
        return cfg, version, action(client, store, version, cfg.annotation)
    except LabelStudioError as e:
        _fail(str(e), EXIT_FAILED)


def _accounts(cfg: FlywheelConfig):
    from flywheel.feedback.accounts import Accounts

    return Accounts(cfg.state_dir / "annotate" / "accounts.json")


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Annotator name (letters, digits, '.', '-', '_')."),
    admin: bool = typer.Option(False, help="An admin account."),
    replace: bool = typer.Option(False, help="Give an existing account a new token."),
) -> None:
    """Make an annotator account and print its token (shown once; only a hash is kept).
    Exit 2 for a bad or taken name."""
    try:
        token = _accounts(_cfg(ctx)).add(name, admin=admin, replace=replace)
    except ValueError as e:
        _fail(str(e), EXIT_USAGE)
    typer.echo(f"{name}: token {token}")


@users_app.command("ls")
def users_ls(ctx: typer.Context) -> None:
    """The annotator accounts."""
    accounts = _accounts(_cfg(ctx))
    for name in accounts.names():
        account = accounts.get(name)
        typer.echo(f"{name}{' (admin)' if account and account.admin else ''}")


@annotate_app.command("serve")
def annotate_serve(
    ctx: typer.Context,
    candidates: str | None = typer.Option(None, help="Candidates version (default: the newest)."),
    host: str | None = typer.Option(None, help="Address to listen on (default: annotation.app_host)."),
    port: int | None = typer.Option(None, help="Port (default: annotation.app_port)."),
) -> None:
    """Serve the annotation app for a candidates version: annotators log in with their name and
    token and rank each object's candidates in 3D viewers; every judgement is written to the
    store as it is submitted (`flywheel annotate export` gathers them for ingestion). Without
    any account, makes an `admin` account and prints its token. Exit 4 without candidates,
    2 when the 3D viewer is not installed (run scripts/setup.sh)."""
    import secrets

    import uvicorn

    from flywheel.feedback.app import AppSettings, create_app

    cfg = _cfg(ctx)
    version = _candidates_version(cfg, candidates)
    accounts = _accounts(cfg)
    if not accounts.names():
        typer.echo(f"no annotator accounts yet: made `admin`, token {accounts.add('admin', admin=True)}")
    key_file = cfg.state_dir / "annotate" / "secret_key"
    if not key_file.is_file():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(32))
        key_file.chmod(0o600)
    viewer = cfg.annotation.viewer_dir or WEB_MODULES / "three"
    try:
        web = create_app(
            AppSettings(
                _store(cfg),
                version,
                accounts.path,
                key_file.read_text().strip(),
                viewer,
                cfg.annotation.app_mode,
                cfg.rankings.gold,
                cfg.annotation.gold_rate,
            )
        )
    except FileNotFoundError as e:
        _fail(str(e), EXIT_USAGE)
    host, port = host or cfg.annotation.app_host, port or cfg.annotation.app_port
    typer.echo(
        f"annotation app for candidates {version} ({cfg.annotation.app_mode}): http://{host}:{port}/  "
        "(add annotators: flywheel annotate users add NAME)"
    )
    uvicorn.run(web, host=host, port=port, log_level="warning")


@annotate_app.command("export")
def annotate_export(
    ctx: typer.Context,
    candidates: str | None = typer.Option(None, help="Candidates version (default: the newest)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="JSONL file (default: annotation/<version>/app_judgements.jsonl in the store)."
    ),
) -> None:
    """Every judgement made in the annotation app for a candidates version, as one native
    export; ingest it with `flywheel rankings ingest FILE` (or pass it to `flywheel run`).
    Each export holds every judgement so far; ingesting it again counts each once."""
    from flywheel.feedback.judgements import export_rows

    cfg = _cfg(ctx)
    store = _store(cfg)
    version = _candidates_version(cfg, candidates)
    text = export_rows(store, version)
    if output is None:
        key = f"annotation/{version}/app_judgements.jsonl"
        store.put_bytes(key, text.encode())
        where = store.uri(key)
    else:
        output.write_text(text)
        where = str(output)
    typer.echo(f"{text.count(chr(10))} judgements -> {where}")


@annotate_app.command("publish")
def annotate_publish(
    ctx: typer.Context,
    candidates: str | None = typer.Option(None, help="Candidates version (default: the newest)."),
) -> None:
    """Create or update one Label Studio project per template (annotation.templates) for a
    candidates version and import the tasks it does not have yet. Idempotent. Exit 1 when
    Label Studio refuses or cannot be reached."""
    from flywheel.feedback.label_studio_api import publish_to_label_studio

    _, version, projects = _on_label_studio(ctx, candidates, publish_to_label_studio)
    for p in projects:
        typer.echo(f"{p.title}: {p.tasks} tasks ({p.imported} new, {p.refreshed} refreshed)  {p.url}")


@annotate_app.command("pull")
def annotate_pull(
    ctx: typer.Context,
    candidates: str | None = typer.Option(None, help="Candidates version (default: the newest)."),
    round_index: int = typer.Option(
        ..., "--round", min=0, help="The round (k) these judgements close: picks the acceptance threshold alpha_k."
    ),
) -> None:
    """Export every annotation of the version's Label Studio projects (saved in the store),
    then ingest them like `flywheel rankings ingest`, each read through its project's labeling
    config. Pulling again re-ingests nothing; an edited annotation is a revision."""
    from flywheel.feedback.label_studio_api import pull_from_label_studio

    cfg, version, pulled = _on_label_studio(ctx, candidates, pull_from_label_studio)
    if not pulled:
        _fail(f"no Label Studio project of candidates {version}: run `flywheel annotate publish`", EXIT_NOT_FOUND)
    for p in pulled:
        typer.echo(
            f"project {p.project_id} ({p.template}): {p.annotations} annotations -> {p.uri or 'nothing to ingest'}"
        )
    files = [p.uri for p in pulled if p.uri]
    if not files:
        typer.echo("no annotations yet: nothing to ingest")
        return
    before = _latest_version(cfg, "rankings")
    result = _run_flow(
        ctx,
        "flows.rankings:rankings",
        files=files,
        candidates=version,
        round_index=round_index,
        label_configs={p.uri: p.label_config for p in pulled if p.uri},
    )
    _print_ingestion(cfg, result, files, before)


@rankings_app.command("report")
def rankings_report(
    ctx: typer.Context,
    version: str | None = typer.Argument(None, help="rankings version (default: newest)."),
    round_index: int = typer.Option(
        ..., "--round", min=0, help="The round (k) these judgements close: picks the acceptance threshold alpha_k."
    ),
    candidates: str | None = typer.Option(
        None, help="Candidates version to decide on (default: the one the rankings version was ingested for)."
    ),
    plot: Path | None = typer.Option(None, help="Also save the report plot (PNG) here."),
) -> None:
    """Submissions per kind and annotator, quarantine reasons, and what round k's rules
    (config `rankings`) decide on them now: decisions, accept rate, agreement, annotators."""
    cfg = _cfg(ctx)
    store = _store(cfg)
    from collections import Counter

    from flywheel.core.datasets import Dataset, DatasetNotCommitted
    from flywheel.feedback.aggregate import judge_round
    from flywheel.tracking.plots import rankings_report as report_plot

    try:
        ds = Dataset(store, "rankings", version)
        if candidates is None:
            candidates = next(p["version"] for p in ds.marker["parents"] if p["name"] == "candidates")
        registry = Dataset(store, "candidates", candidates).manifest().select(["candidate_id", "object_id"])
    except (DatasetNotCommitted, FileNotFoundError, KeyError, StopIteration) as e:
        _fail(f"no rankings to report: {e}", EXIT_NOT_FOUND)
    table = ds.manifest()
    typer.echo(f"{ds.ref}: {table.num_rows} submissions from {len(set(table['source_file'].to_pylist()))} exports")
    for name, counts in (
        ("kind", Counter(table["kind"].to_pylist())),
        ("annotator", Counter(table["annotator_id"].to_pylist())),
    ):
        typer.echo(f"  by {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    reasons = Counter(ds.quarantine()["reason"].to_pylist())
    typer.echo("  quarantined: " + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"))

    judged = judge_round(table, registry.to_pandas(), round_index, **cfg.rankings.rules())
    m = judged.metrics()
    counts = judged.decisions["decision"].value_counts()
    typer.echo(
        f"round {round_index} on candidates@{candidates} (alpha {judged.alpha:g}): {m['objects_judged']} objects "
        f"judged: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; accept rate {m['accept_rate']:.2f}; {m['preference_pairs']} preference pairs"
    )
    fleiss = judged.agreement["fleiss"]
    typer.echo(
        f"  agreement: {m['overlapping_items']} items judged by 2+ annotators; Fleiss' kappa "
        + (f"{fleiss:.2f}" if fleiss is not None else "n/a")
        + "".join(f"; Cohen's kappa {pair} {k:.2f}" for pair, k in sorted(judged.agreement["cohen"].items()))
    )
    typer.echo(
        "  annotators:\n"
        + "\n".join("    " + line for line in judged.annotators.round(3).to_string(index=False).splitlines())
    )
    if plot:
        typer.echo(f"plot: {report_plot(judged.decisions, judged.annotators, plot)}")


@synth_app.command("meshes")
def synth_meshes(ctx: typer.Context) -> None:
    """Build the mesh library to train on: load, filter, de-duplicate, drop held-out meshes, voxelise (config `meshes`)."""
    _run_flow(ctx, "flows.synth:synth_meshes")


@synth_app.command("iso3do")
def synth_iso3do(ctx: typer.Context) -> None:
    """Mesh library, then Iso-3DO renders with Blender (config `iso3do`, `render`)."""
    _run_flow(ctx, "flows.synth:synth_iso3do")


@synth_app.command("occlusions")
def synth_occlusions(ctx: typer.Context) -> None:
    """Mesh library, then Flying-Occlusions render-paste (config `occlusions`, `render`)."""
    _run_flow(ctx, "flows.synth:synth_occlusions")


@synth_app.command("all")
def synth_all(ctx: typer.Context) -> None:
    """The whole synthetic-data refresh: meshes, Iso-3DO and Flying Occlusions."""
    _run_flow(ctx, "flows.synth:synth_all")


@artists_app.command("check")
def artists_check(
    ctx: typer.Context,
    deliveries: str | None = typer.Option(
        None,
        "--deliveries",
        metavar="FOLDER",
        help="Folder or s3:// prefix to check (default: config artists.deliveries, else the series' folder).",
    ),
) -> None:
    """The configured series' artist queue and what importing the deliveries now would make of
    each: usable (Art-3DO at the next round) or refused, with the reason; cases still pending.
    Commits nothing. Exit 1 when a delivery would be refused."""
    cfg = _cfg(ctx)
    store = _store(cfg)
    from flywheel.core.records import Rejected
    from flywheel.feedback.artists import read_queue
    from flywheel.rounds import ledger
    from tasks.artists import artists_base, check_deliveries, deliveries_uri

    series = ledger.series_id(cfg)
    base = artists_base(series)
    upto = len(ledger.committed_rounds(store, series))  # the round in progress may have queued too
    queued = read_queue(store, base, upto)
    where = deliveries or deliveries_uri(cfg, series)
    typer.echo(f"series {series}: {len(queued)} case(s) queued; brief: {store.uri(base + '/README.md')}")
    typer.echo(f"deliveries: {where}")
    try:
        results = check_deliveries(cfg, base, upto, where)
    except (OSError, ValueError) as e:
        _fail(f"deliveries {where}: {e}", EXIT_FAILED)
    delivered = set()
    for r in results:
        if isinstance(r, Rejected):
            typer.echo(f"  REFUSED  {r.item_id}: {r.reason} ({r.detail})")
        else:
            delivered.add(r.key)
            typer.echo(f"  ok       {r.key}: {r.row['source']} (mesh {r.row['mesh_id']})")
    pending = [t for t in queued if t.object_id not in delivered]
    for t in pending:
        typer.echo(f"  pending  {t.object_id} (queued in round {t.round}, due {t.due_round})")
    refused = sum(isinstance(r, Rejected) for r in results)
    typer.echo(f"{len(delivered)} usable, {refused} refused, {len(pending)} pending")
    if refused:
        raise typer.Exit(EXIT_FAILED)


def _readable_metavars(typer_app: typer.Typer) -> None:
    """Help shows what to type (``N``, ``PATH``, ``TEXT``; nothing after a flag) where an
    option names no metavar of its own, instead of Python type names (``<list[str]>``)."""
    import inspect
    import typing

    from typer.models import ArgumentInfo, OptionInfo

    for command in typer_app.registered_commands:
        hints = typing.get_type_hints(command.callback) if command.callback else {}
        for name, param in inspect.signature(command.callback).parameters.items() if command.callback else ():
            info = param.default
            if not isinstance(info, (OptionInfo, ArgumentInfo)) or info.metavar is not None:
                continue
            kind = hints.get(name)
            inner = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # list[X], X | None
            if isinstance(info, ArgumentInfo):
                info.metavar = name.upper()
            elif kind is bool:
                info.metavar = ""
            else:
                info.metavar = {int: "N", float: "X", Path: "PATH"}.get(inner, "TEXT")  # type: ignore[arg-type]
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _readable_metavars(group.typer_instance)


_readable_metavars(app)


def run_cli() -> None:
    """The ``flywheel`` console script: :data:`app`, then leave once Python's own exit work is
    done (threads joined, every ``atexit`` handler run: Prefect's, MLflow's, logging's) without
    the native libraries' teardown. Arrow's thread pool can abort that teardown ("terminate
    called without an active exception", exit -6) after a command has finished and printed its
    result, turning a success into a crash for the script that called it (apache/arrow#34314)."""
    leaving = {"code": EXIT_FAILED}

    def leave() -> None:  # registered first, so it runs after every other atexit handler
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
                pass
        os._exit(leaving["code"])

    atexit.register(leave)
    try:
        app()
        leaving["code"] = 0
    except SystemExit as stop:
        leaving["code"] = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else EXIT_FAILED
        raise
    except KeyboardInterrupt:
        leaving["code"] = 130
        raise


if __name__ == "__main__":  # pragma: no cover
    run_cli()
