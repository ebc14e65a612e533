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
from infratool.tasks.remote_builders.spec import SECRETS_FILE, Builder, Topology, nixos_key_path, secret_key

MARK = "infratool:remote-builders:"
MACHINES = "/etc/nix/machines"
NIX_CONF = "/etc/nix/nix.conf"
CLIENT_KNOWN_HOSTS = "/root/.ssh/known_hosts"
"""root's known_hosts, where earlier versions pinned builders: their lines are removed."""
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
    """``ssh-ng://user@infratool-builder-<name>``: the client's ssh_config alias holds address and port.

    Nix 2.8's ssh-ng URIs cannot carry a port; an alias works for any port.
    """
    return f"{protocol}://{builder.user}@{builder.alias}"


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
    """Pinned known_hosts lines of ``builder`` (every pinned key), under its alias.

    The alias sets ``HostKeyAlias``, so ssh looks the key up by the alias
    whatever the address and port, and so does the file Nix writes from the
    machines line's host key field.
    """
    return [f"{builder.alias} {key} {marker(builder.name)}" for key in builder.host.host_keys]


SSH_CONFIG = "/root/.ssh/config"
"""root's ssh_config on ``os: linux`` clients: read by every ssh root runs (the Nix build hook's too)."""
SSH_BEGIN = "# BEGIN infratool:remote-builders (managed: edits between BEGIN and END are replaced)"
SSH_END = "# END infratool:remote-builders"


def ssh_alias(builder: Builder, key_path: str, known_hosts: str | None) -> list[str]:
    """The ``Host infratool-builder-<name>`` block: address, port, key and the pinned host key.

    ``known_hosts`` None leaves the system's known_hosts (NixOS's
    ``programs.ssh.knownHosts``) in charge.
    """
    lines = [
        f"Host {builder.alias}",
        f"  HostName {builder.host.address}",
        f"  Port {builder.host.port}",
        f"  User {builder.user}",
        f"  IdentityFile {key_path}",
        "  IdentitiesOnly yes",
        f"  HostKeyAlias {builder.alias}",
    ]
    if known_hosts is not None:
        lines.append(f"  UserKnownHostsFile {known_hosts}")
    return [*lines, "  StrictHostKeyChecking yes", "  BatchMode yes"]


def ssh_config_block(topo: Topology, key_path: str, known_hosts: str | None) -> list[str]:
    """Every builder's alias, as one block that ends by matching every host again."""
    lines = [SSH_BEGIN]
    for builder in topo.builders:
        lines += ssh_alias(builder, key_path, known_hosts)
    # `Host *` closes the last alias: what follows in the file applies to all hosts, as before.
    return [*lines, "Host *", SSH_END]


def replace_ssh_block(text: str, block: list[str]) -> str:
    """``text`` with our block (between the markers) replaced by ``block``, at the top of the file.

    At the top, because ssh_config takes the first value it finds and a
    ``Host`` line scopes everything after it: placed after someone's own
    ``Host`` section, the aliases would be read as part of it.
    """
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.strip() == SSH_BEGIN:
            inside = True
        elif line.strip() == SSH_END and inside:
            inside = False
        elif not inside:
            kept.append(line)
    while kept and not kept[0].strip():
        kept.pop(0)
    out = "\n".join([*block, *kept])
    return out + "\n" if out else ""


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
            "hostName": b.alias,
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
    # Pinned under the alias (HostKeyAlias), whatever the builder's address and port.
    known = {
        f"infratool-remote-builder-{b.name}": {"hostNames": [b.alias], "publicKey": b.host_key}
        for b in topo.builders
    }
    key = nixos_key_path(client.name)
    aliases = "\n".join(line for b in topo.builders for line in ssh_alias(b, key, None)) + "\n"
    config = {
        "nix.distributedBuilds": True,
        "nix.buildMachines": machines,
        "nix.settings.builders-use-substitutes": True,
        "programs.ssh.knownHosts": known,
        "programs.ssh.extraConfig": aliases,
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
        # A dedicated system user: a shell only so sshd can run the forced command.
        f"users.users.{builder.user}.isSystemUser": True,
        f"users.users.{builder.user}.group": builder.user,
        f"users.users.{builder.user}.useDefaultShell": True,
        f"users.users.{builder.user}.openssh.authorizedKeys.keys": keys,
        f"users.groups.{builder.user}": {},
    }
    return nixgen.module(config, args="{ config, ... }:")
