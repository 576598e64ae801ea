"""A local, production-like stack on loopback: SeaweedFS (S3), an MLflow tracking server with
its artifacts on S3, a Prefect server, and a Ray head with one worker node.

``up`` starts what is not running, waits for every health check, and writes into
``<state_dir>/stack/``: ``stack.json`` (pids, ports, logs), ``flywheel.yaml`` (a config that
points the flows at the stack: ``flywheel --config .flywheel/stack/flywheel.yaml ...``), and
two secret files, mode 0600, referred to by path only: ``aws-credentials`` (the S3 keys,
an AWS shared-credentials file) and ``ray-token`` (the Ray cluster's auth token; the stack
runs Ray 2.60 with ``RAY_AUTH_MODE=token``). ``down`` stops only what ``up`` started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from flywheel.core.config import FlywheelConfig
from flywheel.ops.servers import free_port, start_seaweedfs

BUCKET = "flywheel"
PROFILE = "flywheel-stack"
SERVICES = ("s3", "mlflow", "prefect", "ray-head", "ray-worker")
BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    pass


@dataclass
class Paths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "stack.json"

    @property
    def config(self) -> Path:
        return self.root / "flywheel.yaml"

    @property
    def credentials(self) -> Path:
        return self.root / "aws-credentials"

    @property
    def ray_token(self) -> Path:
        return self.root / "ray-token"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


def paths(cfg: FlywheelConfig) -> Paths:
    return Paths(cfg.state_dir / "stack")


def _secret_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    import http.client

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (OSError, http.client.HTTPException):  # not listening yet, or not an HTTP server
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _spawn(cmd: list, env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        return subprocess.Popen(
            [str(c) for c in cmd], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _node_ip() -> str:
    # Ray rewrites 127.0.0.1 to the node's address, so the head must listen there.
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def read_state(cfg: FlywheelConfig) -> dict:
    try:
        return json.loads(paths(cfg).state.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def status(cfg: FlywheelConfig) -> dict[str, dict]:
    """Per service: pid, url, alive, healthy, and a message when it is not."""
    state = read_state(cfg)
    out = {}
    for name in SERVICES:
        svc = state.get("services", {}).get(name)
        if not svc:
            out[name] = {"healthy": False, "message": "not started (flywheel stack up)"}
            continue
        alive = _alive(svc["pid"])
        if name in ("mlflow", "prefect"):
            healthy = alive and _http_ok(svc["health"])
        elif name == "ray-worker":
            healthy = alive
        else:
            healthy = alive and _port_open(svc["port"])
        message = (
            "ok"
            if healthy
            else (
                f"process {svc['pid']} is gone; see {svc['log']}"
                if not alive
                else f"running but not answering at {svc.get('health') or svc['port']}; see {svc['log']}"
            )
        )
        out[name] = {**svc, "alive": alive, "healthy": healthy, "message": message}
    return out


def up(
    cfg: FlywheelConfig, *, database_url: str | None = None, ray_cpus: int = 1, timeout_s: float = 120.0, log=print
) -> dict:
    """Start the stack (whatever of it is not already healthy) and wait until it answers."""
    p = paths(cfg)
    current = status(cfg)
    if all(s["healthy"] for s in current.values()):
        log(f"stack already up ({p.state})")
        return read_state(cfg)
    if any(s.get("alive") for s in current.values()):
        raise StackError(
            "part of a previous stack is still running but unhealthy; run `flywheel stack down` "
            "first:\n" + "\n".join(f"  {n}: {s['message']}" for n, s in current.items())
        )
    p.root.mkdir(parents=True, exist_ok=True)
    key, secret = "flywheel-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    _secret_file(p.credentials, f"[{PROFILE}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    _secret_file(p.ray_token, secrets.token_hex(32))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_", "MLFLOW_", "AWS_"))}
    services: dict[str, dict] = {}
    started: list[subprocess.Popen] = []
    try:
        s3 = start_seaweedfs(p.root / "seaweedfs", key, secret, timeout=timeout_s)
        s3.create_bucket(BUCKET)
        services["s3"] = {
            "pid": s3.process.pid,
            "port": int(s3.endpoint_url.rsplit(":", 1)[1]),
            "url": s3.endpoint_url,
            "log": str(s3.log_path),
        }

        ports = {"mlflow": free_port(), "prefect": free_port(), "ray": free_port()}
        mlflow_env = {
            **base,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        mlflow = _spawn(
            [
                BIN / "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                ports["mlflow"],
                "--backend-store-uri",
                f"sqlite:///{p.root / 'mlflow.db'}",
                "--artifacts-destination",
                f"s3://{BUCKET}/mlflow-artifacts",
                "--workers",
                "1",
            ],
            mlflow_env,
            p.log("mlflow"),
        )
        started.append(mlflow)
        services["mlflow"] = {
            "pid": mlflow.pid,
            "port": ports["mlflow"],
            "url": f"http://127.0.0.1:{ports['mlflow']}",
            "health": f"http://127.0.0.1:{ports['mlflow']}/health",
            "log": str(p.log("mlflow")),
        }

        prefect_env = {
            **base,
            "PREFECT_HOME": str(p.root / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        if database_url:
            prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        os.makedirs(prefect_env["PREFECT_HOME"], exist_ok=True)
        prefect = _spawn(
            [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", ports["prefect"]],
            prefect_env,
            p.log("prefect"),
        )
        started.append(prefect)
        api = f"http://127.0.0.1:{ports['prefect']}/api"
        services["prefect"] = {
            "pid": prefect.pid,
            "port": ports["prefect"],
            "url": api,
            "health": f"{api}/health",
            "log": str(p.log("prefect")),
        }

        # Ray last: its nodes take random ports, which could grab a port chosen above but
        # not yet bound by the slower MLflow and Prefect servers.
        _wait(lambda: _http_ok(services["prefect"]["health"]), prefect, "prefect", p, timeout_s)
        _wait(lambda: _http_ok(services["mlflow"]["health"]), mlflow, "mlflow", p, timeout_s)
        # Short: Ray's Unix sockets live under RAY_TMPDIR (107-byte path limit).
        ray_env = {
            **base,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(p.ray_token),
            "RAY_TMPDIR": tempfile.mkdtemp(prefix="flywheel-ray-", dir="/tmp"),
        }
        head = _spawn(
            [
                BIN / "ray",
                "start",
                "--head",
                "--block",
                f"--port={ports['ray']}",
                f"--num-cpus={ray_cpus}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            ray_env,
            p.log("ray-head"),
        )
        started.append(head)
        address = f"{_node_ip()}:{ports['ray']}"
        services["ray-head"] = {
            "pid": head.pid,
            "port": ports["ray"],
            "url": address,
            "log": str(p.log("ray-head")),
            "tmpdir": ray_env["RAY_TMPDIR"],
        }
        _wait(lambda: _port_open(ports["ray"]), head, "ray-head", p, timeout_s)
        worker = _spawn(
            [
                BIN / "ray",
                "start",
                "--block",
                f"--address={address}",
                f"--num-cpus={ray_cpus}",
                "--disable-usage-stats",
            ],
            ray_env,
            p.log("ray-worker"),
        )
        started.append(worker)
        services["ray-worker"] = {"pid": worker.pid, "url": address, "log": str(p.log("ray-worker"))}

    except BaseException:
        for proc in started:
            _kill_group(proc.pid)
        if "s3" in services:
            _kill_group(services["s3"]["pid"])
        raise

    state = {"services": services, "bucket": BUCKET, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    p.state.write_text(json.dumps(state, indent=1))
    stack_config = {
        "project": {"state_dir": str(cfg.state_dir)},
        "store": {
            "root": f"s3://{BUCKET}/store",
            "endpoint_url": services["s3"]["url"],
            "region": "us-east-1",
            "profile": PROFILE,
            "credentials_file": str(p.credentials),
        },
        "mlflow": {"tracking_uri": services["mlflow"]["url"]},
        "prefect": {"api_url": services["prefect"]["url"]},
        "ray": {"address": address, "auth_token_path": str(p.ray_token)},
    }
    p.config.write_text(
        "# Written by `flywheel stack up`: the flows on the local stack.\n"
        + yaml.safe_dump(stack_config, sort_keys=False)
    )
    log(f"stack up: config {p.config}")
    return state


def _wait(check, proc: subprocess.Popen, name: str, p: Paths, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            raise StackError(
                f"{name} exited with code {proc.returncode} while starting; last lines of "
                f"{p.log(name)}:\n{_tail(p.log(name))}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{name} did not become healthy within {timeout_s:.0f} s; see {p.log(name)}:\n{_tail(p.log(name))}"
            )
        time.sleep(0.5)


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_group(pid: int, timeout: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def down(cfg: FlywheelConfig, log=print) -> list[str]:
    """Stop the process groups that ``up`` recorded (workers first), nothing else."""
    state = read_state(cfg)
    stopped = []
    for name in reversed(SERVICES):
        svc = state.get("services", {}).get(name)
        if svc and _alive(svc["pid"]):
            _kill_group(svc["pid"])
            stopped.append(name)
            log(f"stopped {name} (pid {svc['pid']})")
        if svc and svc.get("tmpdir"):  # Ray's sessions: gigabytes of logs over many rounds
            shutil.rmtree(svc["tmpdir"], ignore_errors=True)
    paths(cfg).state.unlink(missing_ok=True)
    return stopped
