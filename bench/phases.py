"""Run the infratool CLI with wall-clock marks at each phase; print them to stderr at exit.

Usage: ``python bench/phases.py <infratool arguments>`` (as ``infratool`` would
be called). Times are from the process's start (read from /proc), so the
interpreter's own start-up and the imports are included.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_T0 = time.time()
marks: list[tuple[str, float]] = [("interpreter up", _T0)]


def process_start() -> float:
    """Epoch seconds at which this process started."""
    with open("/proc/self/stat") as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


_START = process_start()


def mark(name: str) -> None:
    """Record that ``name`` happened now."""
    marks.append((name, time.time()))


def wrap(owner: Any, attr: str, name: str) -> None:
    """Mark the start and end of every call of ``owner.attr``."""
    original: Callable[..., Any] = getattr(owner, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(f"{name} start")
        try:
            return original(*args, **kwargs)
        finally:
            mark(f"{name} end")

    setattr(owner, attr, wrapper)


def report() -> None:
    """Print each mark's offset from process start and from the previous mark."""
    prev = _START
    lines = ["phase                      at (s)   took (s)"]
    for name, t in [*marks, ("exit", time.time())]:
        lines.append(f"{name:25s} {t - _START:7.3f}   {t - prev:7.3f}")
        prev = t
    print("\n".join(lines), file=sys.stderr)


def main() -> None:
    """Patch the phases in, then run the CLI with this process's arguments."""
    atexit.register(report)
    import infratool.cli as cli

    mark("cli imported")
    from infratool import playbook, runner
    from infratool.cli import output as render

    mark("runner, render imported")
    wrap(runner.Runner, "gather", "connect + facts")
    wrap(runner.Runner, "apply", "apply")
    wrap(runner.Runner, "_lock_hosts", "  run locks taken")
    wrap(runner.Runner, "_apply_plan", "  changes applied")
    wrap(render, "plan", "render plan")
    wrap(render, "results", "render results")
    try:
        from infratool.cli import sequence

        wrap(sequence, "audit_run", "audit log")  # the one run sequence calls it by this name
    except (ImportError, AttributeError):
        if hasattr(cli, "audit_run"):
            wrap(cli, "audit_run", "audit log")
    wrap(playbook, "load", "playbook load")
    sys.argv = ["infratool", *sys.argv[1:]]
    cli.main.main()  # not main(): that leaves through os._exit, skipping report()


if __name__ == "__main__":
    main()
