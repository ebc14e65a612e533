"""A host's deferred writes that carry its run lock: one round trip for a host whose apply is one send.

The runner normally takes the run lock on every host it changes before
applying anything (:mod:`infratool.hostlock`): one more session per host
and a fleet-wide wait for the slowest. For a host whose changes all go out
in one batch at the end (host-local entries applied back to back, nothing
to verify, no ``--wait``), :class:`LockedWrites` folds the lock into that
batch: the write script takes the lock, writes, and drops it
(:func:`infratool.hostlock.put_files_locked`). Anything else that touches
the host first (a command, a read, an earlier send) takes the lock the usual
way before it, held until the run ends.
"""

from __future__ import annotations

from collections.abc import Callable

from infratool import hostlock
from infratool.context import DeferredWrites, HostContext
from infratool.remote import FileWrite, Held


class LockedWrites(DeferredWrites):
    """:class:`DeferredWrites` for a host whose run lock is not taken yet.

    ``on_held`` receives a lock taken the usual way (the runner releases it
    at the end of the run). :meth:`finish` sends the queue with the lock in
    the same script, unless the lock is already held.
    """

    def __init__(self, ctx: HostContext, holder: str, on_held: Callable[[Held], None]) -> None:
        super().__init__(ctx)
        self._holder = holder
        self._on_held = on_held
        self._locked = False
        self._final = False

    def _lock(self) -> None:
        if not self._locked:
            self._on_held(hostlock.acquire(self._ctx.remote, 0, self._holder))
            self._locked = True

    def finish(self) -> None:
        """Send what is queued: the host's last send of the run, so the lock may ride with it."""
        self._final = True
        self.flush()

    def _send(self, writes: list[FileWrite]) -> None:
        if self._final and not self._locked:
            hostlock.put_files_locked(self._ctx.remote, writes, self._holder)
            return
        self._lock()
        super()._send(writes)

    def __getattr__(self, name: str):
        if name not in self._PASSIVE:
            # A command or read before the last send: it runs under the lock.
            self._lock()
        return super().__getattr__(name)
