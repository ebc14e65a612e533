"""What every command module of the CLI shares: global options and small helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    help="Seconds one remote command may take (the host kills it after); also bounds connecting.",
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


def audit_run(g: Globals, command: str, book, plan, result=None) -> None:
    """Append one audit record for a plan or run (descriptions only, never values)."""
    from infratool import log

    record: dict[str, Any] = {
        "command": command,
        "playbook": str(book.path),
        "hosts": plan.hosts,
        "changes": [{"host": c.host, "task": c.task, "description": c.description} for c in plan.changes],
        "plan_failures": plan.failures,
    }
    if result is not None:
        record["outcome"] = {
            r.host: {"status": r.status, "applied": r.applied, "error": r.error}
            for r in result.hosts.values()
        }
        record["exit_code"] = result.exit_code
    log.audit(record, g.audit_log)
