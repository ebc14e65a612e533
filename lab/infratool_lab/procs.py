"""Finding and ending a lab host's processes without trusting bare pids.

A process belongs to a lab host when it lives in a mount namespace whose
``/etc/ssh`` holds that host's random token (``files.TOKEN_PATH``). Reading
``/proc/PID/root/...`` goes through the process's own mount namespace, so
only processes inside the host see the token: a recycled pid, another lab's
host, or anything of the controller never matches. That covers the sshd and
everything started inside the host (over SSH, or by ``nsenter``): nginx,
postgres, nix-daemon.

Signals go through a pidfd opened *before* the namespace is re-checked, so a
pid that died and was reused between the scan and the kill is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping

from infratool_lab.errors import LabError
from infratool_lab.files import TOKEN_PATH

# pid -> mount namespace link ("mnt:[4026532177]") of one host's processes
Members = dict[int, str]


def mount_ns(pid: int | str) -> str | None:
    """The mount namespace of ``pid``, or None if it is gone (zombies have none)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _token_seen_by(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/root{TOKEN_PATH}") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def scan(tokens: Mapping[str, str]) -> dict[str, Members]:
    """Every live process of the given hosts (host name -> token), in one pass over /proc.

    A host may own more than one namespace (an sshd that died, leaving a
    service behind, then a fresh sshd); all of them are reported.
    """
    own = mount_ns("self")
    groups: dict[str, list[int]] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            ns = mount_ns(entry.name)
            # Processes sharing our namespace are the controller's, by definition.
            if ns is None or ns == own:
                continue
            groups.setdefault(ns, []).append(int(entry.name))

    name_of = {token: name for name, token in tokens.items()}
    found: dict[str, Members] = {name: {} for name in tokens}
    for ns, pids in groups.items():
        # Any one member's view decides for the whole namespace; try the next
        # pid only if this one vanished or chrooted away from the token.
        for pid in pids:
            token = _token_seen_by(pid)
            if token is None:
                continue
            if token in name_of:
                found[name_of[token]].update(dict.fromkeys(pids, ns))
            break
    return found


def is_running(pid: int, members: Members, comm: str) -> bool:
    """Whether ``pid`` is one of ``members`` and its command name is ``comm``."""
    if pid not in members:
        return False
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == comm
    except OSError:
        return False


def send_signal(pid: int, ns: str, sig: int) -> None:
    """Signal ``pid`` only if it is still the process in namespace ``ns``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (old kernel): fall back to a re-checked kill
        if mount_ns(pid) == ns:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return
    try:
        # The pidfd pins this very process: if it is still in the host's
        # namespace now, the signal cannot reach a recycled pid.
        if mount_ns(pid) == ns:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def terminate(tokens: Mapping[str, str], grace: float = 1.5, timeout: float = 15.0) -> None:
    """End every process of the given hosts and wait until none is left.

    SIGTERM first (sshd and services exit cleanly), SIGKILL to whatever is
    still there after ``grace`` seconds. Rescans until the hosts are empty,
    because an sshd may fork a session child between a scan and its signal.
    """
    if not tokens:
        return
    start = time.monotonic()
    termed: set[int] = set()
    while True:
        members = {pid: ns for m in scan(tokens).values() for pid, ns in m.items()}
        if not members:
            return
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise LabError(f"lab processes {sorted(members)} are still alive after {timeout:.0f}s of SIGKILL")
        for pid, ns in members.items():
            if elapsed > grace:
                send_signal(pid, ns, signal.SIGKILL)
            elif pid not in termed:
                send_signal(pid, ns, signal.SIGTERM)
                termed.add(pid)
        time.sleep(0.01)
