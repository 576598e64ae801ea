"""Persistent Blender worker processes, seen from the parent.

A :class:`BlenderWorker` owns one ``rendering.blender_worker`` process: started on first
use, pinned to its cores, recycled after ``recycle_after`` jobs (Blender's memory grows in
long-lived processes), killed and restarted when a job exceeds its timeout or the process
dies. Blender's own output is appended to the worker's log file.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)


class RenderFailure(RuntimeError):
    """One job could not be rendered; ``reason`` is what gets recorded in quarantine."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class WorkerCrashed(RenderFailure):
    pass


class RenderTimeout(RenderFailure):
    pass


class JobFailed(RenderFailure):
    pass


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class BlenderWorker:
    _ids = itertools.count()

    def __init__(
        self,
        log_dir: str | Path,
        *,
        cores: list[int] | None = None,
        recycle_after: int = 50,
        startup_timeout_s: float = 60.0,
        name: str | None = None,
    ):
        self.name = name or f"blender-{os.getpid()}-{next(self._ids)}"
        self.log_path = Path(log_dir) / f"{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cores = cores
        self.recycle_after = recycle_after
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self._replies: TextIO | None = None
        self.jobs_done = 0
        self.starts = 0
        self._next_id = itertools.count()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "FLYWHEEL_RESULT_FD": str(write_fd), "PYTHONUNBUFFERED": "1"}
        cores = self.cores

        def pin():  # in the child, before exec
            if cores:
                os.sched_setaffinity(0, cores)

        with open(self.log_path, "ab") as logfile:
            logfile.write(f"\n--- start {time.strftime('%Y-%m-%d %H:%M:%S')} cores={cores}\n".encode())
            logfile.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rendering.blender_worker"],
                stdin=subprocess.PIPE,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env=env,
                preexec_fn=pin,
                cwd=str(Path(__file__).resolve().parent.parent),
                text=True,
            )
        os.close(write_fd)
        self._replies = os.fdopen(read_fd, "r")
        self.starts += 1
        self.jobs_done = 0
        hello = self._read_reply(self.startup_timeout_s, "start-up")
        log.debug("%s ready (pid %s, %.2f s)", self.name, hello.get("pid"), hello.get("startup_s", 0))

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self._replies is not None:
            self._replies.close()
        self.proc, self._replies = None, None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- jobs ----------------------------------------------------------------------------
    def _read_reply(self, timeout: float, what: str) -> dict[str, Any]:
        assert self._replies is not None, "the worker was not started"
        ready, _, _ = select.select([self._replies], [], [], timeout)
        if not ready:
            self.kill()
            raise RenderTimeout(
                f"{what}: no answer from {self.name} within {timeout:.0f} s (worker killed and will restart)"
            )
        line = self._replies.readline()
        if not line:
            code = self.proc.wait() if self.proc else None
            self._close()
            raise WorkerCrashed(
                f"{what}: Blender worker {self.name} died (exit code {code}); "
                f"last log lines:\n{_log_tail(self.log_path)}"
            )
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, fn: str, kwargs: dict, timeout: float) -> dict:
        """Run ``fn(**kwargs)`` in the worker. Raises a :class:`RenderFailure` subclass if the
        job fails, times out or kills the worker; the next call starts a fresh worker."""
        if self.proc is not None and (self.proc.poll() is not None or self.jobs_done >= self.recycle_after):
            self.stop()  # recycle (or clean up after an earlier death)
        if self.proc is None:
            self.start()
        request_id = next(self._next_id)
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"id": request_id, "fn": fn, "kwargs": kwargs}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._read_reply(1.0, fn)  # reports the crash with the log tail
        reply = self._read_reply(timeout, fn)
        self.jobs_done += 1
        if not reply["ok"]:
            raise JobFailed(reply["error"])
        return reply["result"]

    def __enter__(self) -> BlenderWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
