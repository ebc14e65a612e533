"""Deadlines of remote commands: the host kills a command that runs out of time.

:func:`with_deadline` wraps a command in GNU ``timeout`` so the host itself
stops it (exit :data:`TIMED_OUT`); the controller waits :data:`REPORT_GRACE`
longer, so a live host reports the timeout and a silent one is still caught.
:func:`seconds_left` turns one deadline into the per-read timeouts paramiko takes.
"""

from __future__ import annotations

import shlex
import time

TIMED_OUT = 124
"""GNU timeout's exit status when the deadline passed."""
KILL_AFTER = 5
"""Seconds a timed-out command gets to exit on SIGTERM before SIGKILL."""
REPORT_GRACE = 3.0
"""How much longer the controller waits than the host's own deadline."""


def with_deadline(command: str, seconds: float) -> str:
    """``command`` wrapped so the host itself kills it after ``seconds``.

    Closing the SSH channel does not stop a command that has no pty (it
    only loses its pipes), and sshd refuses "signal" requests for root
    sessions, so a timed-out command would otherwise go on running — and
    finish its change — after the run reported it failed. GNU ``timeout``
    puts the command in its own process group and signals the whole group
    (TERM, then KILL after a grace period). The command still runs under the
    user's login shell, exactly as sshd would have run it.
    """
    return f'exec timeout -k {KILL_AFTER} {seconds:.3f} "${{SHELL:-/bin/sh}}" -c {shlex.quote(command)}'


def seconds_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline), never below a tick."""
    return None if deadline is None else max(0.001, deadline - time.monotonic())
