"""Fault injection for the chaos tests: die like ``kill -9`` at a named point.

``INFRATOOL_FAULT=<point>`` makes the process SIGKILL itself right after
that point: a named step of a staged operation (``stored`` in a rotation), or
``after-change-N`` — the N-th change the runner applied, whatever it was — so
every multi-step operation can be interrupted at every step without each
task declaring its own points. ``<point>:stop`` stops the process there
instead (SIGSTOP), so a test can hold it mid-operation — its locks held — and
start a second one against it, then let it go on with SIGCONT. Unset (always,
outside tests), it costs one dictionary lookup.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading

FAULT_ENV = "INFRATOOL_FAULT"

_applied = itertools.count(1)
_lock = threading.Lock()


def fault_point(point: str) -> None:
    """SIGKILL this process if ``$INFRATOOL_FAULT`` names ``point``; SIGSTOP it for ``point:stop``."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted == point:
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{point}:stop":
        os.kill(os.getpid(), signal.SIGSTOP)


def change_applied() -> None:
    """Count one applied change (runner); ``after-change-N`` fires on the N-th."""
    if FAULT_ENV not in os.environ:
        return
    with _lock:
        n = next(_applied)
    fault_point(f"after-change-{n}")
