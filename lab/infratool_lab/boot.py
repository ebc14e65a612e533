"""Booting lab hosts: sshd inside fresh mount and UTS namespaces, and waiting for it.

``unshare`` runs *without* ``--fork``: it unshares, execs the boot script,
which bind-mounts the host's private directories and execs sshd, so the pid
of the ``Popen`` is sshd's own. The mounts live and die with the namespace.
A host is ready when its sshd logs ``Server listening on ADDRESS port PORT.``
(logged right after listen()), which costs no probe connection in the log.
A builder also runs a real ``nix-daemon`` (its clients log in as an
unprivileged user, whose ``nix-daemon --stdio`` forwards to it).
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infratool_lab import files
from infratool_lab.errors import AddressInUseError, LabError
from infratool_lab.host import LabHost

# The PATH sshd gives root sessions on Debian; Lab.exec uses it too, so a
# command behaves the same through exec as over SSH.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 30.0

# Runs inside the new namespaces, then becomes sshd (same pid). Arguments:
# host tree, host name, sshd binary, 1 to run a nix-daemon (else 0), then the
# directories to mount in order.
_SCRIPT = r"""
set -e
tree=$1 name=$2 sshd=$3 daemon=$4
shift 4
# A fresh machine may lack a mount point (Debian's nix-bin ships no /etc/nix):
# create it, empty, so the bind has somewhere to land.
for dir in "$@"; do mkdir -p "$dir"; mount --bind "$tree$dir" "$dir"; done
printf '%s\n' "$name" > /proc/sys/kernel/hostname
if [ "$daemon" = 1 ]; then
  # The host's nix-daemon, restarted when /etc/nix/*.conf changes: the daemon
  # reads its configuration (trusted-users) only when it starts, and a systemd
  # host gets `systemctl try-restart nix-daemon` from the task that edits it.
  (
    conf() { cat /etc/nix/*.conf 2>/dev/null | cksum; }
    while :; do
      seen=$(conf)
      nix-daemon </dev/null >>/var/log/nix-daemon.log 2>&1 &
      pid=$!
      while [ "$(conf)" = "$seen" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    done
  ) </dev/null >/dev/null 2>&1 &
fi
# A NixOS-shaped host boots into its boot default, as NixOS's stage 2 does:
# that generation is activated (its units started) before sshd answers.
if [ -x /var/lib/lab-boot/default/bin/switch-to-configuration ]; then
  /var/lib/lab-boot/default/bin/switch-to-configuration test </dev/null >>/var/log/lab-boot.log 2>&1 ||
    echo "lab-boot: activating the boot default failed (see /var/log/lab-boot.log)" >&2
fi
exec "$sshd" -D -f /etc/ssh/sshd_config -E /var/log/sshd.log
"""


@dataclass
class Booting:
    """A host whose sshd was started and is not yet known to listen."""

    host: LabHost
    log_offset: int
    """Size of the sshd log before the start: only newer lines count."""
    child: subprocess.Popen[bytes] | None = None
    """The process we started, or None when an existing sshd was sent SIGHUP."""


def check_address_free(address: str, port: int = 22) -> None:
    """Raise :class:`AddressInUseError` if something listens on ``address:port``.

    SO_REUSEADDR makes the probe ignore TIME_WAIT leftovers of a previous
    lab (sshd sets it too) and fail only on a real listener.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(address) from None
            raise LabError(f"cannot bind {address}:{port}: {exc.strerror}") from None


def mount_order(lab_root: Path) -> list[str]:
    """The private directories in the order to mount them for a lab at ``lab_root``.

    The directory containing the lab itself (a lab under /tmp, say) goes
    last: once it is covered, the sources of the others would vanish.
    """
    return sorted(files.PRIVATE_DIRS, key=lambda d: lab_root.is_relative_to(Path(d)))


def log_size(host: LabHost) -> int:
    """Current size of the host's sshd log (0 before the first start)."""
    try:
        return host.sshd_log.stat().st_size
    except OSError:
        return 0


def _log_since(host: LabHost, offset: int) -> str:
    try:
        with open(host.sshd_log, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _clear_run(host: LabHost) -> None:
    # /run is volatile on a real machine; stale pid files and sockets of a
    # previous boot would stop services from starting again.
    for entry in host.path("/run").iterdir():
        if entry.name == "sshd":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def start(host: LabHost, order: Sequence[str], unshare: str, sshd: str, nix_daemon: bool = False) -> Booting:
    """Start the sshd of ``host`` in new namespaces; record its pid in ``sshd.pid``."""
    _clear_run(host)
    offset = log_size(host)
    with open(host.root / "boot.log", "wb") as boot_log:
        child = subprocess.Popen(
            [
                unshare,
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                _SCRIPT,
                "lab-boot",
                str(host.root),
                host.name,
                sshd,
                "1" if nix_daemon else "0",
                *order,
            ],
            stdin=subprocess.DEVNULL,
            stdout=boot_log,
            stderr=boot_log,
            env={"PATH": ROOT_PATH},
            cwd="/",
            # Own session: a Ctrl-C in the terminal that ran `lab up` must
            # not take the lab down with it.
            start_new_session=True,
        )
    (host.root / "sshd.pid").write_text(f"{child.pid}\n")
    return Booting(host, offset, child)


def wait_ready(booting: Mapping[str, Booting], timeout: float = READY_TIMEOUT) -> None:
    """Wait until every host's sshd listens; LabError (with its log) if one dies or hangs."""
    waiting = dict(booting)
    deadline = time.monotonic() + timeout
    while waiting:
        for name, boot in list(waiting.items()):
            host, child = boot.host, boot.child
            text = _log_since(host, boot.log_offset)
            if f"Server listening on {host.address} port {host.port}." in text:
                del waiting[name]
            elif child is not None and child.poll() is not None:
                early = (host.root / "boot.log").read_text(errors="replace")
                detail = (early + text).strip()
                if "Address already in use" in detail:
                    raise AddressInUseError(host.address, f"sshd of {name} could not bind")
                raise LabError(
                    f"{name}: sshd exited with status {child.returncode}: {detail[-2000:] or 'no output'}"
                )
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise LabError(
                f"sshd did not start listening within {timeout:.0f}s on: {', '.join(sorted(waiting))}"
            )
        time.sleep(0.005)
