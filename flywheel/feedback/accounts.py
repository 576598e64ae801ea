"""Annotator accounts of the annotation app: a name and a secret token each.

Kept in one JSON file (``<state dir>/annotate/accounts.json``, written atomically, mode 600)
holding only a salted SHA-256 of each token: the token itself is shown once, when the
account is made (``flywheel annotate users add NAME``), and cannot be read back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flywheel.feedback.judgements import ANNOTATOR


@dataclass(frozen=True)
class Account:
    name: str
    admin: bool


def _digest(salt: str, token: str) -> str:
    return hashlib.sha256(f"{salt}:{token}".encode()).hexdigest()


class Accounts:
    def __init__(self, path: Path):
        self.path = path

    def _read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _write(self, accounts: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".accounts.", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(accounts, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def add(self, name: str, admin: bool = False, replace: bool = False) -> str:
        """Make an account (``replace``: give an existing one a new token); returns its token."""
        if not ANNOTATOR.match(name):
            raise ValueError(f"annotator name {name!r}: 1-64 letters, digits, '.', '-' or '_'")
        accounts = self._read()
        if name in accounts and not replace:
            raise ValueError(f"annotator {name} exists already (--replace gives it a new token)")
        token, salt = secrets.token_urlsafe(24), secrets.token_hex(8)
        accounts[name] = {
            "salt": salt,
            "token_sha256": _digest(salt, token),
            "admin": admin,
            "created": datetime.now(UTC).isoformat(),
        }
        self._write(accounts)
        return token

    def verify(self, name: str, token: str) -> Account | None:
        """The account if ``token`` is its token, else None (in constant time per account)."""
        entry = self._read().get(name)
        if entry is None:
            return None
        if not hmac.compare_digest(entry["token_sha256"], _digest(entry["salt"], token)):
            return None
        return Account(name, bool(entry["admin"]))

    def names(self) -> list[str]:
        return sorted(self._read())

    def get(self, name: str) -> Account | None:
        entry = self._read().get(name)
        return Account(name, bool(entry["admin"])) if entry else None
