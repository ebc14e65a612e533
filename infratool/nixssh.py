"""``NIX_SSHOPTS`` for the Nix commands the controller points at a host (deploys, ``nix copy``).

Nix and ``nixos-rebuild --target-host`` reach a host with the system ``ssh``,
which knows nothing of the inventory: not the port (an ``ssh-ng://`` URI
cannot carry one), not the key to log in with, and not the pinned host key —
it would consult ``~/.ssh/known_hosts`` or ask. :func:`nix_ssh_env` gives
them all three, from the inventory, with a known_hosts file written from the
pin alone and ``StrictHostKeyChecking=yes``: a host whose key is not the
pinned one is refused, never learned.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infratool.errors import InputError
from infratool.inventory import Host


def known_hosts_lines(host: Host) -> str:
    """known_hosts lines pinning ``host``: ``[address]:port`` unless the port is 22 (OpenSSH's rule)."""
    name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
    return "".join(f"{name} {key}\n" for key in host.host_keys)


def sshopts(host: Host, known_hosts: Path) -> str:
    """The ``NIX_SSHOPTS`` value for ``host`` (Nix splits it on whitespace: no word may hold one)."""
    words = [
        "-p",
        str(host.port),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
    ]
    if host.ssh_key:
        words += ["-i", str(host.ssh_key), "-o", "IdentitiesOnly=yes"]
    for word in words:
        if any(ch.isspace() for ch in word):
            raise InputError(f"host {host.name!r}: {word!r} cannot go into NIX_SSHOPTS (it holds whitespace)")
    return " ".join(words)


@contextlib.contextmanager
def nix_ssh_env(host: Host) -> Iterator[dict[str, str]]:
    """``{"NIX_SSHOPTS": ...}`` for ``host``, valid inside the block (its known_hosts is removed after)."""
    if not host.host_keys:
        raise InputError(f"host {host.name!r} has no pinned host key: Nix must not learn it on first use")
    with tempfile.TemporaryDirectory(prefix="infratool-nixssh.") as tmp:
        known = Path(tmp) / "known_hosts"
        known.write_text(known_hosts_lines(host))
        known.chmod(0o600)
        yield {"NIX_SSHOPTS": sshopts(host, known)}


def ssh_alias(host: Host) -> str:
    """The ``Host`` alias :func:`nix_ssh_config` gives ``host`` (usable in ``ssh-ng://USER@ALIAS``)."""
    return f"infratool-{host.name}"


@contextlib.contextmanager
def nix_ssh_config(*hosts: Host) -> Iterator[dict[str, str]]:
    """``NIX_SSHOPTS="-F <config>"`` reaching every host of ``hosts`` by :func:`ssh_alias`, each pinned.

    One ``NIX_SSHOPTS`` holds one ``-p``: a command that talks to two hosts
    (``nix copy --from`` a builder ``--to`` a host) names them by alias in an
    ssh_config of its own instead, each alias with its address, port,
    identity and a known_hosts file holding only its pinned key.
    """
    for host in hosts:
        if not host.host_keys:
            raise InputError(f"host {host.name!r} has no pinned host key: Nix must not learn it on first use")
    with tempfile.TemporaryDirectory(prefix="infratool-nixssh.") as tmp:
        blocks = []
        for host in hosts:
            known = Path(tmp) / f"known_hosts.{host.name}"
            known.write_text(known_hosts_lines(host))
            lines = [
                f"Host {ssh_alias(host)}",
                f"  HostName {host.address}",
                f"  Port {host.port}",
                f"  User {host.user}",
                f"  UserKnownHostsFile {known}",
                "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes",
                "  BatchMode yes",
            ]
            if host.ssh_key:
                lines += [f"  IdentityFile {host.ssh_key}", "  IdentitiesOnly yes"]
            blocks.append("\n".join(lines))
        config = Path(tmp) / "ssh_config"
        config.write_text("\n".join(blocks) + "\n")
        config.chmod(0o600)
        if any(ch.isspace() for ch in str(config)):
            raise InputError(f"{config} cannot go into NIX_SSHOPTS (it holds whitespace)")
        yield {"NIX_SSHOPTS": f"-F {config}"}
