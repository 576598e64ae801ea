"""The round lock across machines: a lease in the shared store (local disk and a real S3
server), with holders in other processes and other state folders, killed or stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from flywheel.core.leases import LeaseBusy, store_lease
from flywheel.core.store import S3Store, Store
from flywheel.rounds import ledger


def _holder(store: Store, ttl_s: float) -> subprocess.Popen:
    """Another process (another machine, as far as the store can tell) holding the lease."""
    config = store.config.model_dump_json() if isinstance(store, S3Store) else "null"
    code = (
        "import json, time\n"
        "from flywheel.core.config import StoreConfig\n"
        "from flywheel.core.leases import store_lease\n"
        "from flywheel.core.store import open_store\n"
        f"config = json.loads({config!r})\n"
        f"store = open_store({store.root_uri!r}, StoreConfig(**config) if config else None)\n"
        f"with store_lease(store, 'rounds', 0, ttl_s={ttl_s}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_two_state_folders_sharing_a_store_run_one_round_at_a_time(store, tmp_path):
    """Each state folder has its own flock; the store's lease still lets one round run."""
    held, release = threading.Event(), threading.Event()

    def machine_a() -> None:
        with ledger.round_lock(tmp_path / "a" / "rounds.lock", 0, store):
            held.set()
            release.wait(60)

    a = threading.Thread(target=machine_a)
    a.start()
    assert held.wait(60)
    with pytest.raises(ledger.RoundBusy, match=rf"running on this store \(.* pid {os.getpid()} since "):
        with ledger.round_lock(tmp_path / "b" / "rounds.lock", 0, store):
            pass
    release.set()
    a.join()
    with ledger.round_lock(tmp_path / "b" / "rounds.lock", 0, store):  # released: the next one runs
        pass


def test_a_killed_holder_frees_the_lease_and_a_stopped_one_loses_it_when_it_expires(store):
    killed = _holder(store, ttl_s=60)
    with pytest.raises(LeaseBusy, match=f"pid {killed.pid}"):
        with store_lease(store, "rounds", 0):
            pass
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    with store_lease(store, "rounds", 0):  # its process is gone from this host: free at once
        pass

    stopped = _holder(store, ttl_s=2)  # alive but silent: a hung holder, or a machine cut off
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        reports: list[str] = []
        with store_lease(store, "rounds", 60, report_every_s=0.5, on_wait=lambda who, _: reports.append(who)):
            waited = time.monotonic() - began
        assert waited > 0.5 and reports and f"pid {stopped.pid}" in reports[0]  # it waited for the expiry, saying so
    finally:
        os.kill(stopped.pid, signal.SIGKILL)
        stopped.wait()
