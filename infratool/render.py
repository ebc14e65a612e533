"""Human output: plans, results and live progress, with rich.

Everything a person reads goes through here; the CLI only chooses between this
and ``--json``. On a terminal: colours, tables and a live per-host display.
Elsewhere (pipes, CI, the timer's journal): plain lines, one per event.
``NO_COLOR`` is honoured by rich itself. Every string is redacted on its way
out, whatever produced it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from infratool.changes import Plan
from infratool.hidden import REDACTOR

STATUS_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "unreachable": "bold red",
    "refused": "bold red",
    "skipped": "dim",
    "connecting": "cyan",
    "connected": "cyan",
    "planned": "blue",
    "applying": "yellow",
}


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that knows whether it is a terminal."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _r(text: Any) -> str:
    return REDACTOR.redact(str(text))


def plan(con: Console, plan: Plan, show_diff: bool = True) -> None:
    """Print a plan: per host, its changes and their diffs, then a summary."""
    # One Text printed once: rich's per-print() overhead made a 100-change
    # plan cost ~0.3 s, a 600-change one seconds (docs/performance.md).
    out = Text()
    for host in plan.hosts:
        changes = plan.for_host(host)
        if host in plan.failures:
            message = _r(plan.failures[host]).removeprefix(f"{host}: ")
            out.append(f"{host}: ", style="bold").append(message, style="bold red").append("\n")
            continue
        if not changes:
            out.append(f"{host}: ", style="bold").append("no changes", style="bold green").append("\n")
            continue
        out.append(f"{host}: {len(changes)} change(s)", style="bold").append("\n")
        for c in changes:
            sign = {"create": "+", "delete": "-", "run": ">", "deploy": "⇒", "rotate": "↻"}.get(c.action, "~")
            out.append(f"  {sign} {_r(c.description)}", style="yellow")
            out.append(f"  [{c.task}]", style="yellow dim").append("\n")
            if show_diff and c.diff:
                for line in _r(c.diff).splitlines():
                    style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
                    out.append(f"      {line}", style=style).append("\n")
    if out:
        con.print(out, end="")
    summary(con, plan)


def summary(con: Console, plan: Plan) -> None:
    """One line: how many changes on how many hosts, and failures."""
    hosts_with = {c.host for c in plan.changes}
    text = f"Plan: {len(plan.changes)} change(s) on {len(hosts_with)} of {len(plan.hosts)} target(s)"
    if plan.failures:
        text += f"; {len(plan.failures)} host(s) failed: {', '.join(sorted(plan.failures))}"
    con.print(Text(text, style="bold red" if plan.failures else "bold"))


def results(con: Console, result: Any) -> None:
    """Per-host outcome table after a run."""
    table = Table(title="Result", show_lines=False)
    table.add_column("host")
    table.add_column("status")
    table.add_column("applied", justify="right")
    table.add_column("detail", overflow="fold")
    for r in result.hosts.values():
        table.add_row(
            r.host,
            Text(r.status, style=STATUS_STYLE.get(r.status, "")),
            str(len(r.applied)),
            _r(r.error or ""),
        )
    con.print(table)


class Progress:
    """Per-host progress: a live table on a terminal, plain lines elsewhere.

    Used as the runner's ``on_event`` callback; thread-safe, since hosts
    report from the pool's threads.
    """

    def __init__(self, con: Console, enabled: bool = True) -> None:
        self.con = con
        self.enabled = enabled
        self.live_mode = enabled and con.is_terminal
        self._rows: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._start = time.monotonic()

    def __call__(self, host: str, status: str, message: str) -> None:
        if not self.enabled:
            return
        message = _r(message)
        with self._lock:
            self._rows[host] = (status, message)
            if self._live is not None:
                self._live.update(self._table())
            elif not self.live_mode:
                elapsed = time.monotonic() - self._start
                print(f"[{elapsed:6.2f}s] {host}: {status} {message}".rstrip(), file=sys.stderr, flush=True)

    def _table(self) -> Table:
        table = Table(show_header=False, box=None)
        for host, (status, message) in sorted(self._rows.items()):
            table.add_row(
                host, Text(status, style=STATUS_STYLE.get(status, "")), Text(message, overflow="ellipsis")
            )
        return table

    def __enter__(self) -> Progress:
        if self.live_mode:
            self._live = Live(self._table(), console=self.con, transient=True, refresh_per_second=8)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
