"""Human output: plans, results and live progress, with rich.

Everything a person reads goes through here; the CLI only chooses between this
and ``--json``. On a terminal: colours, tables and a live per-host display.
Elsewhere (pipes, CI, the timer's journal): plain lines, one per event.
``NO_COLOR`` is honoured by rich itself. Every string is redacted on its way
out, whatever produced it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from infratool import log
from infratool.changes import Plan
from infratool.secrets.secret import REDACTOR

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
    "stale": "bold magenta",
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
        out.append(f"{host}: {_count(changes)}", style="bold").append("\n")
        for c in changes:
            sign = {"create": "+", "delete": "-", "run": ">", "deploy": "⇒", "rotate": "↻", "check": "?"}.get(
                c.action, "~"
            )
            out.append(f"  {sign} {_r(c.description)}", style="yellow")
            out.append(f"  [{c.task}]", style="yellow dim").append("\n")
            if show_diff and c.diff:
                for line in _r(c.diff).splitlines():
                    style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
                    out.append(f"      {line}", style=style).append("\n")
    if out:
        con.print(out, end="")
    summary(con, plan)


def _count(changes: Sequence[Any]) -> str:
    """``2 change(s)``, ``1 change(s), 1 check(s)``: checks are never counted as changes."""
    checks = sum(1 for c in changes if c.is_check)
    text = f"{len(changes) - checks} change(s)"
    return text + (f", {checks} check(s)" if checks else "")


def summary(con: Console, plan: Plan) -> None:
    """One line: how many changes (and checks) on how many targets, and failures."""
    hosts_with = {c.host for c in plan.changes}
    text = f"Plan: {_count(plan.changes)} on {len(hosts_with)} of {len(plan.hosts)} target(s)"
    if plan.stale:
        text += f"; {len(plan.stale)} refused as stale: {', '.join(sorted(plan.stale))}"
    if plan.failures.keys() - plan.stale:
        failed = sorted(plan.failures.keys() - plan.stale)
        text += f"; {len(failed)} host(s) failed: {', '.join(failed)}"
    con.print(Text(text, style="bold red" if plan.failures else "bold"))


@dataclass(frozen=True)
class Column:
    """One column of a :func:`records` table."""

    header: str
    keep: bool = False
    """Never cut or wrap: host names, keys, fingerprints, verdicts."""
    justify: str = "left"


Cell = str | Text


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def records(
    con: Console, title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[Cell]]
) -> None:
    """Print rows as a table, or as one record per line when a table would cut something.

    On a terminal wide enough, a rich table whose ``keep`` columns never wrap
    and whose other columns wrap (fold) instead of being cut. When even the
    narrowest such table does not fit, or output is not a terminal (pipes,
    CI, journals), one line per record, ``first-column  header=value ...``:
    nothing is ever replaced by ``…``, and a pipe gets lines grep and awk
    can read whatever its width.
    """
    rows = [[_redact_cell(c) for c in row] for row in rows]
    widths = _min_widths(columns, rows)
    # 1 for the left border; each column adds its padding (2) and a border.
    if con.is_terminal and 1 + sum(w + 3 for w in widths) <= con.width:
        table = Table(title=title, show_lines=False)
        for col, width in zip(columns, widths, strict=True):
            table.add_column(
                col.header,
                justify=col.justify,  # type: ignore[arg-type]
                no_wrap=col.keep,
                overflow="fold",
                min_width=width,  # rich would otherwise break words to even columns out
            )
        for row in rows:
            table.add_row(*row)
        con.print(table)
        return
    out = Text()
    if title:
        out.append(f"{title}\n", style="bold")
    for row in rows:
        first, *rest = row
        out.append_text(first if isinstance(first, Text) else Text(first, style="bold"))
        for col, cell in zip(columns[1:], rest, strict=True):
            value = " ".join(_plain(cell).splitlines())  # one line per record, whatever the cell
            if value == "":
                continue
            shown = f'"{value}"' if " " in value else value
            out.append(f"  {col.header.replace(' ', '_')}=")
            out.append(shown, style=cell.style if isinstance(cell, Text) else "")
        out.append("\n")
    con.print(out, end="", soft_wrap=True)


def _redact_cell(cell: Cell) -> Cell:
    if isinstance(cell, Text):
        redacted = _r(cell.plain)
        return cell if redacted == cell.plain else Text(redacted, style=cell.style)
    return _r(cell)


def _min_widths(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> list[int]:
    """The narrowest each column may be with no cell cut and no word broken.

    A ``keep`` column needs its longest cell, any other column its longest
    word (header included): narrower than that, rich would break words
    letter by letter, and one record per line reads better.
    """

    def longest_word(text: str) -> int:
        return max((len(w) for w in text.split()), default=0)

    widths = []
    for i, col in enumerate(columns):
        cells = [_plain(row[i]) for row in rows]
        measure = len if col.keep else longest_word
        widths.append(max([longest_word(col.header), *map(measure, cells)]))
    return widths


def results(con: Console, result: Any) -> None:
    """Per-host outcome table after a run.

    Changes that found nothing to do (a rollback when nothing rolled back) are
    not counted as applied; a column counts them, shown only when there are any.
    """
    idle = any(r.nothing_to_do for r in result.hosts.values())
    records(
        con,
        "Result",
        [
            Column("host", keep=True),
            Column("status", keep=True),
            Column("applied", justify="right"),
            *([Column("nothing to do", justify="right")] if idle else []),
            Column("verified"),
            Column("detail"),
        ],
        [
            [
                r.host,
                Text(r.status, style=STATUS_STYLE.get(r.status, "")),
                str(len(r.applied)),
                *([str(len(r.nothing_to_do))] if idle else []),
                "; ".join(r.verified),
                r.error or "",
            ]
            for r in result.hosts.values()
        ],
    )


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
                if log.json_logs():
                    # stderr carries JSON log lines: progress is one more event, so
                    # a consumer can parse every line.
                    line = json.dumps(
                        {
                            "event": "progress",
                            "host": host,
                            "status": status,
                            "message": message,
                            "elapsed": round(elapsed, 2),
                            "level": "info",
                            "timestamp": datetime.now(UTC).isoformat(),
                        }
                    )
                else:
                    line = f"[{elapsed:6.2f}s] {host}: {status} {message}".rstrip()
                print(line, file=sys.stderr, flush=True)

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
