"""Leases in the store: one holder at a time across every machine that shares the store.

A lease is a numbered object ``locks/<name>/<n>.json``, created with the store's conditional
create (exactly one of several racing creators gets number n). Its holder renews the expiry
every ``ttl_s / 3`` from a background thread and marks it released when done. The next
holder may take number n + 1 once lease n is released, has expired (its holder died or lost
the store for ``ttl_s``), or was held by a process of this host that no longer exists (a
killed holder on this machine frees the lease at once). Expiry compares wall clocks: the
machines sharing a store must keep them in step (NTP) to well under ``ttl_s``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flywheel.core.store import Store

log = logging.getLogger(__name__)

#: How long a lease outlives its holder's last renewal.
LEASE_TTL_S = 60.0


class LeaseBusy(RuntimeError):
    """Another holder has the lease and did not let go within the wait."""


def _alive_here(lease: dict[str, Any]) -> bool:
    """False when ``lease``'s holder was a process of this host that no longer exists."""
    if lease.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


def _free(lease: dict[str, Any]) -> bool:
    return bool(lease.get("released")) or lease.get("expires", 0.0) < time.time() or not _alive_here(lease)


def describe(lease: dict[str, Any]) -> str:
    left = lease.get("expires", 0.0) - time.time()
    return f"{lease.get('host')} pid {lease.get('pid')} since {lease.get('since')}, lease expires in {left:.0f} s"


class _Lease:
    def __init__(self, store: Store, name: str, ttl_s: float):
        self.store, self.prefix, self.ttl_s = store, f"locks/{name}", ttl_s
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": uuid.uuid4().hex,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.number: int | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _key(self, n: int) -> str:
        return f"{self.prefix}/{n:012d}.json"

    def latest(self) -> tuple[int, dict[str, Any] | None]:
        """The highest lease number and its content (0, None: never held)."""
        numbers = [
            int(o.key.rsplit("/", 1)[1][:-5]) for o in self.store.list(self.prefix + "/") if o.key.endswith(".json")
        ]
        if not numbers:
            return 0, None
        n = max(numbers)
        return n, json.loads(self.store.get_bytes(self._key(n)))

    def _body(self, **extra: Any) -> bytes:
        return json.dumps({**self.me, "expires": time.time() + self.ttl_s, **extra}).encode()

    def try_take(self) -> dict[str, Any] | None:
        """Take the lease if it is free; None when taken, else the holder's lease."""
        n, current = self.latest()
        if current is not None and not _free(current):
            return current
        if not self.store.create_if_absent(self._key(n + 1), self._body()):
            return self.latest()[1] or {}  # another taker won number n + 1
        self.number = n + 1
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.prefix}", daemon=True)
        self._renewer.start()
        for old in range(max(1, n - 8), n):  # keep the folder small: earlier leases are over
            self.store.delete([self._key(old)])
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            assert self.number is not None
            if self.latest()[0] != self.number:
                log.error(
                    "lease %s was taken over by another holder (this one went %g s unrenewed)", self.prefix, self.ttl_s
                )
                return
            self.store.put_bytes(self._key(self.number), self._body())

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.number is not None and self.latest()[0] == self.number:
            self.store.put_bytes(self._key(self.number), self._body(released=True))


@contextmanager
def store_lease(
    store: Store,
    name: str,
    wait_s: float,
    *,
    ttl_s: float = LEASE_TTL_S,
    report_every_s: float = 30.0,
    on_wait: Callable[[str, float], None] | None = None,
) -> Iterator[None]:
    """Hold lease ``name`` of ``store`` for the block (see the module docstring). Waits up to
    ``wait_s`` for the holder, calling ``on_wait(holder, waited_s)`` every ``report_every_s``
    (default: a warning in the log), then raises :class:`LeaseBusy` naming the holder."""
    lease = _Lease(store, name, ttl_s)
    started = time.monotonic()
    said = -math.inf
    while True:
        holder = lease.try_take()
        if holder is None:
            break
        now = time.monotonic()
        who = describe(holder) if holder else "holder unknown"
        if now - started >= wait_s:
            raise LeaseBusy(f"{who} (lease {store.uri(lease.prefix)}); waited {wait_s:g} s")
        if now - said >= report_every_s:  # people waiting see why, and keep seeing it
            (on_wait or (lambda h, s: log.warning("waiting for lease %s, held by %s: %.0f s", name, h, s)))(
                who, now - started
            )
            said = now
        time.sleep(min(1.0, max(0.05, wait_s / 20)))
    try:
        yield
    finally:
        lease.release()
