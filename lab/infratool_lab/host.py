"""What a lab host is, as the controller sees it: data only, no processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infratool_lab import files


@dataclass(frozen=True)
class LabHost:
    """One lab host: its name, loopback address and private tree on the controller."""

    name: str
    address: str
    root: Path
    tags: tuple[str, ...] = ()
    port: int = 22
    """sshd's port (22 unless :meth:`Lab.set_port` moved it, as real fleets do)."""
    nixos: bool = False
    """NixOS-shaped (``lab up --nixos``): ``os: nixos`` in the inventory, a system profile."""

    def path(self, remote: str) -> Path:
        """The controller's path of the host's absolute path ``remote``.

        ``host.path("/etc/nix/nix.conf")`` is ``<lab>/<name>/etc/nix/nix.conf``.
        Raises ValueError for a path that is not private to the host.
        """
        return files.host_path(self.root, remote)

    @property
    def sshd_log(self) -> Path:
        """The host's sshd log (LogLevel VERBOSE): logins, key fingerprints, sessions."""
        return self.path(files.SSHD_LOG_PATH)

    @property
    def host_key_public(self) -> str:
        """The host's current sshd host key, ``ssh-ed25519 AAAA...`` (no comment)."""
        return files.public_key_of(self.path(files.HOST_KEY_PATH))


@dataclass(frozen=True)
class HostStatus:
    """One row of ``infratool lab status``."""

    name: str
    address: str
    pid: int | None
    running: bool
    processes: int
    """How many processes live in the host (sshd, its sessions, services)."""
