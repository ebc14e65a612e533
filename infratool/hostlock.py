"""The per-host run lock: one infratool run applies changes to a host at a time.

Two runs planned from the same state would each rewrite a file from what
they read (both "changed", one update lost). The lock is held *on the host*
for the apply phase, by a shell that the run's own SSH connection keeps
alive, so it is tied to the run's life, not to its good manners:

- it is a symlink, ``/var/lib/infratool/run.lock``, created with ``ln -s``
  (atomic, fails when it exists) whose target records the holder: its pid,
  that process's start time, the boot id, and a description of the run;
- the holder waits on ``cat`` reading the session's stdin: the controller
  releases by closing it; a controller killed by ``kill -9``, or a dropped
  connection, closes it too, and the holder removes the lock;
- a lock whose holder is gone (other boot, no such process, a reused pid
  with another start time) is stale and is taken over.

Only POSIX sh and coreutils run on the host. ``/var/lib`` (not ``/run``)
because the lab hosts have a private ``/var/lib`` but share ``/run``.
"""

from __future__ import annotations

import getpass
import math
import os
import shlex
import socket
import time
from collections.abc import Sequence

from infratool.errors import HostError
from infratool.remote import FileWrite, Held, PartialWrite, Remote

LOCK_PATH = "/var/lib/infratool/run.lock"
_POLL = 0.2
"""Seconds between two attempts while waiting."""
BUSY_EXIT = 75
"""EX_TEMPFAIL: the lock is held and the wait ran out."""

_TAKE = r"""L=$1 tries=$2 what=$3 busy=${4:-1}
umask 077
mkdir -p -- "${L%/*}"
read -r boot < /proc/sys/kernel/random/boot_id
read -r st < /proc/$$/stat
st=${st##*) }
set -- $st
me="$$ ${20} $boot $what"
alive() {  # holder "pid start boot ..." still running?
  set -- $1
  [ "$3" = "$boot" ] || return 1
  want=$2
  read -r hs < "/proc/$1/stat" 2>/dev/null || return 1
  hs=${hs##*) }
  set -- $hs
  [ "${20}" = "$want" ]
}
n=0
while ! ln -s -- "$me" "$L" 2>/dev/null; do
  cur=$(readlink -- "$L") || continue
  if ! alive "$cur"; then
    # Stale: move it aside (one waiter wins the rename) and check it was
    # the stale one, not a lock taken meanwhile, which is put back.
    if mv -T -- "$L" "$L.stale.$$" 2>/dev/null; then
      [ "$(readlink -- "$L.stale.$$")" = "$cur" ] || mv -n -T -- "$L.stale.$$" "$L" 2>/dev/null
      rm -f -- "$L.stale.$$"
    fi
    continue
  fi
  if [ "$n" -ge "$tries" ]; then
    set -- $cur
    shift 3
    echo "busy $*" >&"$busy"
    exit 75
  fi
  [ "$n" -gt 0 ] || echo waiting
  n=$((n + 1))
  sleep 0.2
done
"""
"""Takes the lock (sets ``me``) or prints ``busy <holder>`` and exits 75."""

_HOLD = r"""echo locked
cat >/dev/null
[ "$(readlink -- "$L")" != "$me" ] || rm -f -- "$L"
"""
"""Holds the lock until stdin closes, then drops it (if it is still ours)."""

_DROP_AT_EXIT = r"""trap '[ "$(readlink -- "$L")" != "$me" ] || rm -f -- "$L"' EXIT
"""
"""Drops the lock when the script exits; a script killed before that leaves a stale lock (taken over)."""

_SCRIPT = _TAKE + _HOLD


def lock_script(wait: float, holder: str, path: str = LOCK_PATH) -> str:
    """The holder script: prints ``locked`` and holds until stdin closes, or ``busy <holder>``."""
    tries = max(0, math.ceil(wait / _POLL))
    return f"set -- {shlex.quote(path)} {tries} {shlex.quote(holder)}\n{_SCRIPT}"


def describe_run(what: str) -> str:
    """Who holds the lock, as other runs will be told: user@controller, pid, when, what."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} since {when}: {what}"
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:200]


def acquire(remote: Remote, wait: float, holder: str) -> Held:
    """Take the run lock on ``remote``'s host, waiting up to ``wait`` seconds; release it with ``.release()``.

    Raises :class:`HostError` naming the run that holds it when the wait runs out.
    """
    held = remote.hold(
        lock_script(wait, holder),
        until=lambda line: line == "locked" or line.startswith("busy"),
        timeout=wait + 30,
        what="take the run lock",
    )
    if held.line.startswith("busy"):
        held.release()
        raise _busy(remote, held.line, wait)
    return held


def put_files_locked(remote: Remote, writes: Sequence[FileWrite], holder: str, path: str = LOCK_PATH) -> None:
    """Take the run lock, write ``writes`` and drop the lock, all in one script: one round trip.

    For a host whose whole apply is this one send (the runner decides):
    the lock is held by the write script's own shell for exactly as long as
    the writes take, with the guarantees of :func:`acquire` (a stale holder
    is taken over; a script killed on the way leaves a lock whose holder is
    gone, which the next run takes over). No waiting: a busy host raises
    :class:`HostError` as :func:`acquire` does, with nothing written; a
    failed write raises :class:`PartialWrite` as :meth:`Remote.put_files`.
    """
    take = f"set -- {shlex.quote(path)} 0 {shlex.quote(holder)} 2\n{_TAKE}{_DROP_AT_EXIT}"
    try:
        remote.put_files(writes, prefix=take)
    except PartialWrite as exc:
        if exc.exited == BUSY_EXIT and exc.written == 0 and exc.stderr.startswith("busy"):
            raise _busy(remote, exc.stderr.strip(), 0) from None
        raise


def _busy(remote: Remote, line: str, wait: float) -> HostError:
    """The error for a lock held by another run (``line``: ``busy <holder>``)."""
    holder_text = line.removeprefix("busy").strip() or "unknown"
    advice = "retry later" if wait else "pass --wait SECONDS to queue behind it"
    return HostError(
        remote.host.name,
        f"another infratool run is applying changes to this host ({holder_text}); nothing applied: {advice}",
    )
