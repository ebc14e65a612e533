"""What every command module of the CLI shares: global options and small helpers."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click


@dataclass
class Globals:
    """Options shared by every command."""

    inventory: str | None
    json: bool
    verbosity: int
    audit_log: Path | None
    audit: Any = None
    """The open :class:`~infratool.log.AuditLog` (see :func:`open_audit`)."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Ties a run's ``started`` record to its outcome in the audit log."""


pass_globals = click.make_pass_decorator(Globals)
"""Decorator giving a command the :class:`Globals`."""


limit_option = click.option(
    "--limit", "-l", metavar="SEL", help="Host selection: names, globs, tag:NAME, !exclusion, comma lists."
)
"""``--limit``, the same on every command that selects hosts."""
forks_option = click.option(
    "--forks", "-f", default=10, show_default=True, type=click.IntRange(1, 256), help="Hosts handled at once."
)
"""``--forks``: the size of the bounded pool of hosts handled in parallel."""
timeout_option = click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds one remote command may take (the host kills it after).",
)
"""``--timeout`` for remote commands."""


def examples(*lines: str) -> str:
    """Help text ending with an Examples block (click keeps it unwrapped)."""
    return "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def load_inventory(g: Globals):
    """The inventory chosen by -i / $INFRATOOL_INVENTORY / ./hosts.yaml."""
    from infratool import inventory

    return inventory.load(inventory.resolve_path(g.inventory))


def emit_json(data: Any) -> None:
    """Print ``data`` as redacted JSON on stdout."""
    from infratool.hidden import REDACTOR

    click.echo(REDACTOR.redact(json.dumps(data, indent=2, default=str)))


def open_audit(g: Globals) -> Any:
    """Open the audit log now, before any connection: a symlink, FIFO or device is exit 3."""
    from infratool import log

    if g.audit is None:
        g.audit = log.AuditLog.open(g.audit_log)
    return g.audit


def _plan_record(g: Globals, command: str, book, plan, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "run": g.run_id,
        "command": command,
        "playbook": str(book.path),
        "hosts": plan.hosts,
        "changes": [{"host": c.host, "task": c.task, "description": c.description} for c in plan.changes],
        "plan_failures": plan.failures,
    }


def audit_started(g: Globals, command: str, book, plan) -> None:
    """Record that ``plan`` is about to be applied (before the first change: a kill -9 leaves this)."""
    open_audit(g).write(_plan_record(g, command, book, plan, "started"))


def audit_run(g: Globals, command: str, book, plan, result=None) -> None:
    """Append one audit record for a plan, or a run's outcome (descriptions only, never values).

    A write failure is reported on stderr by the log; the command's result and
    exit code stand.
    """
    record = _plan_record(g, command, book, plan, "finished" if result is not None else "planned")
    if result is not None:
        record["outcome"] = {
            r.host: {"status": r.status, "applied": r.applied, "error": r.error}
            for r in result.hosts.values()
        }
        record["exit_code"] = result.exit_code
    open_audit(g).write(record)
