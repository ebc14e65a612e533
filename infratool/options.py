"""Run options as one frozen dataclass (after black's ``mode.py``).

Built once by the CLI and passed down unchanged, so every layer reads the
same knobs and a run's settings can be logged in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunOptions:
    """Every knob of one plan or run."""

    forks: int = 10
    """Hosts handled at once (a bounded pool, never one thread per host)."""
    limit: str | None = None
    """``--limit`` selection applied on top of the playbook's hosts."""
    yes: bool = False
    """Apply without asking."""
    deploy: bool = True
    """Deploy NixOS hosts whose generated Nix changed (infratool/deploy/)."""
    confirm_timeout: int = 30
    """Seconds a deployed host waits for confirmation before it rolls itself back."""
    build_on: str | None = None
    """Build NixOS systems in this inventory host's store instead of the controller's."""
    connect_timeout: float = 10.0
    command_timeout: float | None = None
    """Seconds a single remote command may take (None: no limit)."""
    lock_wait: float = 0.0
    """Seconds to queue behind another run holding a host's run lock (0: refuse at once)."""
    unattended: bool = False
    """Set by the timer: guarded operations (firmware writes) refuse."""
    audit_log: Path | None = None
    dry_run: bool = False
