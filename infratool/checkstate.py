"""Passing checks, remembered on the controller so a converged run plans no check.

A check (``Change(action="check")``) proves something and changes nothing.
After it passes, its record here holds the digest of what it depended on:
the facts its playbook entry read on its host (re-read after the run) and its
args. The next plan drops the check while that digest is unchanged and its
host saw no change in that run. Losing this file only costs one re-run of
each check, so it is plain JSON written atomically, not locked.

Location: ``$INFRATOOL_STATE_DIR/checks.json``, else
``$XDG_STATE_HOME/infratool/checks.json`` (``~/.local/state/infratool``),
beside the audit log. Records are keyed by inventory file, host and check.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from infratool.context import write_atomic


def state_path() -> Path:
    """Where the passing checks are recorded."""
    base = os.environ.get("INFRATOOL_STATE_DIR")
    if base:
        return Path(base) / "checks.json"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "infratool" / "checks.json"


def check_digest(facts: str, args: Any) -> str:
    """What a check's verdict depends on: its facts digest and its args (secrets withheld)."""
    from infratool.planfile import encode

    text = json.dumps([facts, encode(args, None, "check")], sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class CheckState:
    """The record of passing checks for one inventory."""

    def __init__(self, inventory: Path, path: Path | None = None) -> None:
        self.path = path or state_path()
        self.inventory = str(Path(inventory).resolve())

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def passed(self, host: str, check: str, digest: str) -> bool:
        """Whether ``check`` last passed on ``host`` with these inputs."""
        return self._load().get(self.inventory, {}).get(host, {}).get(check) == digest

    def record(self, passed: dict[tuple[str, str], str]) -> None:
        """Record ``{(host, check): digest}`` as passing (one read-modify-write)."""
        if not passed:
            return
        data = self._load()
        mine = data.setdefault(self.inventory, {})
        for (host, check), digest in passed.items():
            mine.setdefault(host, {})[check] = digest
        write_atomic(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o600)

    def forget(self, host: str, check: str) -> None:
        """Drop a check's record (it failed: plan it again next time)."""
        data = self._load()
        if data.get(self.inventory, {}).get(host, {}).pop(check, None) is not None:
            write_atomic(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o600)
