"""Text that remote builders need, rendered from a :class:`~.spec.Topology`: pure functions.

Every line infratool writes into a file it shares with people
(``authorized_keys``, ``known_hosts``, ``/etc/nix/machines``) ends with a
marker ``infratool:remote-builders:<host>``: the lines so marked are ours to
rewrite or delete; every other line is kept exactly as it is.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping

from infratool import nixgen
from infratool.inventory import Host
from infratool.tasks.remote_builders.spec import SECRETS_FILE, Builder, Topology, secret_key

MARK = "infratool:remote-builders:"
MACHINES = "/etc/nix/machines"
NIX_CONF = "/etc/nix/nix.conf"
CLIENT_KNOWN_HOSTS = "/root/.ssh/known_hosts"
"""root's known_hosts: the nix daemon (and the build hook it runs) is root."""
MODULE_CLIENT = "remote-builders"
MODULE_BUILDER = "remote-builders-builder"

# The marker is the line's last word, after a space or a '#' (machines lines
# carry it as a comment, which Nix strips before parsing the fields).
_MARKED = re.compile(r"(?:^|[\s#])" + re.escape(MARK) + r"([A-Za-z0-9_-]+)\s*$")

REMOTE_COMMAND = {"ssh-ng": "nix-daemon --stdio", "ssh": "nix-store --serve --write"}
"""What the builder runs for a client key, whatever the client asks for (sshd's forced command)."""


def marker(owner: str) -> str:
    """The marker of lines managed on behalf of ``owner`` (a client or builder name)."""
    return MARK + owner


def owner_of(line: str) -> str | None:
    """The host a managed line belongs to, or None for a line we must not touch."""
    m = _MARKED.search(line)
    return m.group(1) if m else None


def key_blob(public_line: str) -> str:
    """``type base64`` of an OpenSSH public key line (the comment dropped)."""
    fields = public_line.split()
    return f"{fields[0]} {fields[1]}"


def replace_managed(text: str, lines: Iterable[str]) -> str:
    """``text`` with every managed line removed and ``lines`` appended; other lines untouched."""
    kept = [line for line in text.splitlines() if owner_of(line) is None]
    while kept and not kept[-1].strip():
        kept.pop()  # no blank lines piling up where managed lines used to be
    out = "\n".join([*kept, *lines])
    return out + "\n" if out else ""


def managed_lines(text: str) -> dict[str, list[str]]:
    """The managed lines of ``text``, by owner."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        owner = owner_of(line)
        if owner is not None:
            found.setdefault(owner, []).append(line)
    return found


def line_key(line: str) -> str | None:
    """The ``type base64`` public key inside an authorized_keys line (None if it has none)."""
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if word.startswith(("ssh-", "ecdsa-", "sk-")) and re.match(r"^[A-Za-z0-9+/]+=*$", words[i + 1]):
            return f"{word} {words[i + 1]}"
    return None


def authorized_line(protocol: str, public: str, client: str) -> str:
    """The builder's authorized_keys line for ``client``: the key may run only the Nix daemon.

    ``restrict`` turns off forwarding, pty and X11; the forced command
    replaces whatever the client asks to run, so the key opens no shell.
    """
    return f'restrict,command="{REMOTE_COMMAND[protocol]}" {key_blob(public)} {marker(client)}'


def store_uri(protocol: str, builder: Builder) -> str:
    """``ssh-ng://user@address`` of a builder."""
    return f"{protocol}://{builder.user}@{builder.host.address}"


def host_key_base64(builder: Builder) -> str:
    """The machines-line host key field: base64 of ``type base64`` (what Nix decodes into known_hosts)."""
    return base64.b64encode(builder.host_key.encode()).decode()


def _csv(items: Iterable[str]) -> str:
    return ",".join(items) or "-"


def machines_line(topo: Topology, builder: Builder, key_path: str) -> str:
    """One ``/etc/nix/machines`` line: URI systems key maxJobs speedFactor features mandatory hostkey."""
    fields = [
        store_uri(topo.protocol, builder),
        ",".join(builder.systems),
        key_path,
        str(builder.max_jobs),
        str(builder.speed_factor),
        _csv(builder.supported_features),
        _csv(builder.mandatory_features),
        host_key_base64(builder),
    ]
    return " ".join(fields) + f" # {marker(builder.name)}"


def machines_fields(line: str) -> list[str]:
    """The fields of a machines line as Nix reads it (comment stripped, split on whitespace)."""
    return line.split("#", 1)[0].split()


def known_hosts_lines(builder: Builder) -> list[str]:
    """root's known_hosts lines pinning ``builder`` (every pinned key), for ssh and ``nix store ping``."""
    return [f"{builder.host.address} {key} {marker(builder.name)}" for key in builder.host.host_keys]


# -- nix.conf -------------------------------------------------------------------------


def conf_values(text: str, key: str) -> list[str] | None:
    """The words of the last ``key = ...`` line of a nix.conf (None when there is none)."""
    found = None
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=(.*)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            found = m.group(1).split("#", 1)[0].split()
    return found


def trusted_users_needed(text: str, user: str) -> list[str] | None:
    """The new ``trusted-users`` value that adds ``user``, or None when the file names it already.

    Nix's default is ``root``; a file without the line gets one written
    anyway (default kept, ``user`` added), so the trust a builder grants is
    stated in its nix.conf rather than implied. ``extra-trusted-users`` counts.
    """
    current = conf_values(text, "trusted-users")
    extra = conf_values(text, "extra-trusted-users") or []
    if current is not None and user in current + extra:
        return None
    base = ["root"] if current is None else current
    return list(dict.fromkeys([*base, user]))


# -- NixOS modules ----------------------------------------------------------------------


def _nix_literal(text: str) -> str:
    """``text`` escaped for the inside of a Nix double-quoted string."""
    return nixgen.string(text)[1:-1]


def client_module(topo: Topology, client: Host) -> str:
    """The generated NixOS module of a client: build machines, pinned host keys, its key secret."""
    secret = secret_key(client.name)
    machines = [
        {
            "hostName": b.host.address,
            "sshUser": b.user,
            "sshKey": nixgen.Raw(f"config.sops.secrets.{nixgen.string(secret)}.path"),
            "systems": list(b.systems),
            "maxJobs": b.max_jobs,
            "speedFactor": b.speed_factor,
            "supportedFeatures": list(b.supported_features),
            "mandatoryFeatures": list(b.mandatory_features),
            "publicHostKey": host_key_base64(b),
            "protocol": topo.protocol,
        }
        for b in topo.builders
    ]
    known = {
        f"infratool-remote-builder-{b.name}": {"hostNames": [b.host.address], "publicKey": b.host_key}
        for b in topo.builders
    }
    config = {
        "nix.distributedBuilds": True,
        "nix.buildMachines": machines,
        "nix.settings.builders-use-substitutes": True,
        "programs.ssh.knownHosts": known,
        "sops.secrets": {
            # hosts/<client>/generated/ → the repo's secrets/ directory.
            secret: {
                "sopsFile": nixgen.Raw(f"../../../secrets/{SECRETS_FILE}"),
                "mode": "0400",
                "owner": "root",
            }
        },
    }
    return nixgen.module(config, args="{ config, ... }:")


def builder_module(topo: Topology, builder: Builder, publics: Mapping[str, str]) -> str:
    """The generated NixOS module of a builder: restricted client keys and a trusted login user.

    ``publics`` maps client name → public key line. The forced command names
    the daemon by store path, so it works whatever PATH the session gets.
    """
    program = REMOTE_COMMAND[topo.protocol]
    keys = [
        nixgen.Raw(
            '"'
            + _nix_literal('restrict,command="')
            + "${config.nix.package.out}/bin/"
            + _nix_literal(f'{program}" {key_blob(publics[c])} {marker(c)}')
            + '"'
        )
        for c in publics
    ]
    config = {
        # Defining the option replaces NixOS's default ["root"]: keep root trusted.
        "nix.settings.trusted-users": list(dict.fromkeys(["root", builder.user])),
        f"users.users.{builder.user}.openssh.authorizedKeys.keys": keys,
    }
    return nixgen.module(config, args="{ config, ... }:")
