"""What every command module of the CLI shares: global options and small helpers."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click


@dataclass
class Globals:
    """Options shared by every command (they may stand anywhere on the line)."""

    inventory: str | None
    json: bool
    verbosity: int
    audit_log: Path | None
    log_format: str | None = None
    """``json`` or ``text``; None: JSON when stderr is not a terminal."""
    log_file: Path | None = None
    command: str = ""
    """The command being run (``"secrets status"``), for JSON error documents."""
    audit: Any = None
    """The open :class:`~infratool.log.AuditLog` (see :func:`open_audit`)."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Ties a run's ``started`` record to its outcome in the audit log."""

    def configure_logging(self) -> None:
        """Apply the verbosity and log destination (again, after a late global flag)."""
        from infratool import log

        json_logs = None if self.log_format is None else self.log_format == "json"
        log.configure(self.verbosity, json_logs=json_logs, log_file=self.log_file)


pass_globals = click.make_pass_decorator(Globals)
"""Decorator giving a command the :class:`Globals`."""


def complete_limit(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for ``--limit``: host names, ``@tag``, ``tag:NAME``, after ``,``/``!``/``&``.

    Reads the inventory as plain YAML (no validation, nothing printed): a
    half-written inventory still completes, and an unreadable one completes
    nothing rather than printing a traceback into the shell.
    """
    try:
        from infratool import yamlsrc
        from infratool.inventory import resolve_path

        data = yamlsrc.load_plain(resolve_path(ctx.find_root().params.get("inventory")).read_text())
        hosts = data.get("hosts") or {}
        names = [str(n) for n in hosts]
        tags = sorted(
            {str(t) for spec in hosts.values() if isinstance(spec, dict) for t in spec.get("tags") or []}
        )
    except Exception:
        return []
    head, sep, last = incomplete.rpartition(",")
    sign = last[:1] if last[:1] in ("!", "&") else ""
    last = last[len(sign) :]
    candidates = ["all", *names, *(f"@{t}" for t in tags), *(f"tag:{t}" for t in tags)]
    return [f"{head}{sep}{sign}{c}" for c in candidates if c.startswith(last)]


limit_option = click.option(
    "--limit",
    "-l",
    metavar="SEL",
    shell_complete=complete_limit,
    help="Host selection: names, globs, tag:NAME or @NAME, '&' intersection, '!' exclusion, comma lists.",
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


JSON_VERSION = 1
"""Version of every ``--json`` document (docs/json.md); bumped on an incompatible change."""

# Commands whose records are a list: the key the list goes under in the document.
_LIST_KEYS = {
    "hosts": "hosts",
    "secrets status": "secrets",
    "secureboot status": "hosts",
    "lab status": "hosts",
    "tasks": "tasks",
}


def command_name(ctx: click.Context | None = None) -> str:
    """The command path without the program name (``"secrets status"``)."""
    ctx = ctx or click.get_current_context(silent=True)
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:  # the root's name is the program's
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def json_document(data: Any, command: str) -> dict[str, Any]:
    """Wrap a command's data in its versioned document: ``{"version", "command", ...}``.

    A mapping gets the two fields added in front; a list goes under the
    command's key (``hosts``, ``secrets``...), so every document is an object
    a consumer can check the version of before reading on.
    """
    head = {"version": JSON_VERSION, "command": command}
    if isinstance(data, dict):
        return {**head, **{k: v for k, v in data.items() if k not in head}}
    return {**head, _LIST_KEYS.get(command, "items"): data}


def emit_json(data: Any) -> None:
    """Print ``data`` as a redacted, versioned JSON document on stdout (see :func:`json_document`)."""
    from infratool.secrets.secret import REDACTOR

    doc = json_document(data, command_name())
    click.echo(REDACTOR.redact(json.dumps(doc, indent=2, default=str)))


def emit_json_error(exc: BaseException, exit_code: int, command: str) -> None:
    """The JSON document of a failed command: what went wrong and the exit code."""
    from infratool.secrets.secret import REDACTOR

    error: dict[str, Any] = {
        "kind": type(exc).__name__,
        "message": getattr(exc, "message", None) or str(exc),
        "exit_code": exit_code,
    }
    for attr in ("file", "line", "host"):
        value = getattr(exc, attr, None)
        if value is not None:
            error[attr] = value
    doc = {"version": JSON_VERSION, "command": command, "error": error}
    click.echo(REDACTOR.redact(json.dumps(doc, indent=2, default=str)))


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
            r.host: {
                "status": r.status,
                "applied": r.applied,
                "nothing_to_do": r.nothing_to_do,
                "error": r.error,
            }
            for r in result.hosts.values()
        }
        record["exit_code"] = result.exit_code
    open_audit(g).write(record)


def need_terminal(yes: bool) -> None:
    """Refuse (exit 3) to ask for confirmation when nobody can answer: stdin is not a terminal."""
    if not yes and not sys.stdin.isatty():
        from infratool.errors import InputError

        raise InputError("stdin is not a terminal: refusing to prompt; pass --yes to apply unattended")


def progress_display(g: Globals) -> Any:
    """The runner's progress callback: live on a terminal's stderr, quiet with -q or --json."""
    from infratool.cli import output as render

    return render.Progress(render.console(stderr=True), enabled=g.verbosity >= 0 and not g.json)
