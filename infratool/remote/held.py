"""Commands left running on a host (:class:`Held`), and releasing many of them together.

:meth:`infratool.remote.connection.Remote.hold` starts one and returns a
:class:`Held` once the command printed the line it waited for; the run lock
is held this way for as long as the run lives.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from infratool.remote.deadline import seconds_left


class Held:
    """A command left running on the host by :meth:`~infratool.remote.connection.Remote.hold`."""

    def __init__(self, chan, line: str) -> None:
        self._chan = chan
        self.line = line
        """The line that :meth:`~infratool.remote.connection.Remote.hold` waited for."""

    @property
    def exit_status(self) -> int | None:
        """The command's exit status once it finished (None while it runs or when unknown)."""
        return self._chan.exit_status if self._chan.exit_status_ready() else None

    def signal(self) -> None:
        """Close the command's stdin (it then finishes on its own); :meth:`release` waits for that."""
        # A connection already gone raises here: the host saw its stdin close anyway.
        with contextlib.suppress(Exception):
            self._chan.shutdown_write()

    def release(self, timeout: float = 10.0) -> None:
        """Close the command's stdin and wait (up to ``timeout``) for it to finish."""
        try:
            self.signal()
            self._chan.status_event.wait(timeout)
        except Exception:
            pass
        finally:
            self._chan.close()


def release_all(held: Iterable[Held], timeout: float = 10.0) -> None:
    """Release several held commands (one per host) in one round trip, not one each.

    Every stdin is closed first, then each command is awaited: the hosts
    finish in parallel, so releasing the run locks of 64 hosts costs about
    one host's release instead of 64 in a row. ``timeout`` bounds the whole.
    """
    held = list(held)
    for h in held:
        h.signal()
    deadline = time.monotonic() + timeout
    for h in held:
        h.release(seconds_left(deadline))
