"""The remote-builders topology: playbook parameters → validated data.

Everything a playbook can get wrong (a host missing from the inventory, a
system string Nix would not know, ``max_jobs: -1``) is caught here, while
the playbook is loaded, so the error names ``file:line`` and nothing has been
touched yet (exit 3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infratool import yamlsrc
from infratool.inventory import Host, Inventory
from infratool.tasks.base import Param, Source
from infratool.tasks.lib.checks import check_abs_path

SECRETS_FILE = "remote-builders.yaml"
"""The sops file holding every client's builder key, relative to ``<flake>/secrets``."""

DEFAULT_KEY_PATH = "/etc/nix/remote-builders/id_ed25519"
"""Where an ``os: linux`` client keeps its private builder key (0600, root)."""

DEFAULT_USER = "nixremote"
"""The dedicated, unprivileged login user of clients on a builder (never root)."""

ALIAS_PREFIX = "infratool-builder-"
"""Clients reach builder ``<name>`` through the ssh_config alias ``infratool-builder-<name>``."""

PROTOCOLS = ("ssh-ng", "ssh")

# Nix system doubles ("cpu-os") that Nix itself knows; a typo such as
# "x86-linux" would otherwise give a builder no build would ever match.
KNOWN_CPUS = (
    "x86_64",
    "i686",
    "aarch64",
    "armv5tel",
    "armv6l",
    "armv7l",
    "riscv32",
    "riscv64",
    "powerpc64",
    "powerpc64le",
    "mips64el",
    "mipsel",
    "s390x",
    "loongarch64",
)
KNOWN_KERNELS = ("linux", "darwin", "freebsd", "netbsd", "openbsd")
_FEATURE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]*$")
BUILDER_KEYS = (
    "host",
    "systems",
    "max_jobs",
    "speed_factor",
    "supported_features",
    "mandatory_features",
    "ssh_user",
)


def secret_key(client: str) -> str:
    """The sops key path (``a/b/c``) of ``client``'s private builder key."""
    return f"remote-builders/{client}/ssh_key"


def pending_secret_key(client: str) -> str:
    """Where a rotation keeps ``client``'s next key until it is installed and the old one revoked."""
    return f"remote-builders/{client}/next_ssh_key"


def nixos_key_path(client: str) -> str:
    """Where sops-nix activates ``client``'s key on a NixOS client (its default path)."""
    return f"/run/secrets/{secret_key(client)}"


def check_system(value: Any) -> str | None:
    """Why ``value`` is not a Nix system string like ``x86_64-linux`` (None when it is)."""
    if not isinstance(value, str):
        return f"a system must be a string like 'x86_64-linux', got {value!r}"
    cpu, _, kernel = value.partition("-")
    if cpu not in KNOWN_CPUS or kernel not in KNOWN_KERNELS:
        return (
            f"unknown system {value!r}: expected <cpu>-<os> with cpu one of {', '.join(KNOWN_CPUS)} "
            f"and os one of {', '.join(KNOWN_KERNELS)}"
        )
    return None


def _check_features(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(f, str) and _FEATURE.match(f) for f in value):
        return "features must be a list of names like 'kvm' or 'big-parallel'"
    return None


def _check_user(value: Any) -> str | None:
    if not (isinstance(value, str) and _USER.match(value)):
        return f"invalid user name {value!r}"
    if value == "root":
        # A client's key is a trusted Nix client of the builder; as root it would
        # also own the builder's store and everything root can reach.
        return (
            "builder clients must not log in as root: use a dedicated unprivileged user "
            f"(the default, {DEFAULT_USER!r}, is created on os: linux builders)"
        )
    return None


SHARED_PARAMS: dict[str, Param] = {
    "builders": Param(
        list,
        required=True,
        items=(str, dict),
        help="builder host names, or mappings {host, systems, max_jobs, speed_factor, "
        "supported_features, mandatory_features, ssh_user}",
    ),
    "clients": Param(list, required=True, items=str, help="host names that build on the builders"),
    "protocol": Param(
        str, default="ssh-ng", choices=PROTOCOLS, help="ssh-ng (nix-daemon) or ssh (nix-store --serve)"
    ),
    "max_jobs": Param(int, default=1, help="default maxJobs of each builder"),
    "speed_factor": Param(int, default=1, help="default speedFactor of each builder"),
    "supported_features": Param(list, default=list, items=str, help="default supportedFeatures"),
    "mandatory_features": Param(list, default=list, items=str, help="default mandatoryFeatures"),
    "ssh_user": Param(
        str,
        default=DEFAULT_USER,
        help="login user of clients on the builders: dedicated and unprivileged, never root",
        check=_check_user,
    ),
    "key_path": Param(
        str, default=DEFAULT_KEY_PATH, help="private key path on os: linux clients", check=check_abs_path
    ),
}


@dataclass(frozen=True)
class Builder:
    """One builder as the clients see it (one line of ``/etc/nix/machines``)."""

    host: Host
    systems: tuple[str, ...]
    max_jobs: int
    speed_factor: int
    supported_features: tuple[str, ...]
    mandatory_features: tuple[str, ...]
    user: str

    @property
    def name(self) -> str:
        """The builder's inventory name."""
        return self.host.name

    @property
    def host_key(self) -> str:
        """The pinned host key clients trust for this builder (``type base64``), ed25519 first."""
        keys = sorted(self.host.host_keys, key=lambda k: not k.startswith("ssh-ed25519 "))
        return keys[0]

    @property
    def alias(self) -> str:
        """The ssh_config ``Host`` alias clients reach this builder by (any address, any port)."""
        return ALIAS_PREFIX + self.name

    @property
    def build_system(self) -> str:
        """The system a check derivation uses: the builder's own when it offers it."""
        return self.host.system if self.host.system in self.systems else self.systems[0]


@dataclass(frozen=True)
class Topology:
    """Builders, their clients, and how the clients reach them."""

    builders: tuple[Builder, ...]
    clients: tuple[Host, ...]
    protocol: str
    key_path: str

    @property
    def names(self) -> set[str]:
        """Every host taking part."""
        return {b.name for b in self.builders} | {c.name for c in self.clients}

    def client_key_path(self, client: Host) -> str:
        """Where ``client``'s Nix finds its private key (the sops-nix path on NixOS)."""
        return nixos_key_path(client.name) if client.is_nixos else self.key_path

    @property
    def known_hosts_path(self) -> str:
        """An ``os: linux`` client's pinned builder host keys (the aliases' ``UserKnownHostsFile``).

        A file of its own beside the key, never root's known_hosts: what pins
        the builders is exactly what infratool wrote, nothing learned on first use.
        """
        return self.key_path + ".known_hosts"


def parse(args: dict[str, Any], source: Source, inventory: Inventory) -> Topology:
    """Validate the task's arguments into a :class:`Topology`; InputError (file:line) otherwise."""
    for key in ("max_jobs", "speed_factor"):
        _check_counts(args[key], key, source, (key,))
    for key in ("supported_features", "mandatory_features"):
        problem = _check_features(args[key])
        if problem:
            raise source.error(f"{key}: {problem}", key)
    builders: list[Builder] = []
    for i, entry in enumerate(args["builders"]):
        builders.append(_builder(entry, i, args, source, inventory))
    seen: set[str] = set()
    for i, b in enumerate(builders):
        if b.name in seen:
            raise source.error(f"builder {b.name!r} is listed twice", "builders", i)
        seen.add(b.name)
    if not builders:
        raise source.error("'builders' must name at least one builder", "builders")
    clients: list[Host] = []
    for i, name in enumerate(args["clients"]):
        host = _known(name, "client", source, inventory, ("clients", i))
        if host.name in seen:
            what = "a builder" if any(b.name == host.name for b in builders) else "listed twice"
            raise source.error(f"client {name!r} is {what}: a host cannot build on itself", "clients", i)
        seen.add(host.name)
        clients.append(host)
    return Topology(tuple(builders), tuple(clients), args["protocol"], args["key_path"])


def _known(name: str, role: str, source: Source, inventory: Inventory, where: tuple[Any, ...]) -> Host:
    host = inventory.hosts.get(name)
    if host is None:
        raise source.error(f"{role} {name!r} is not in the inventory {inventory.path}", *where)
    return host


def _check_counts(value: Any, key: str, source: Source, where: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise source.error(f"{key} must be an integer, got {value!r}", *where)
    if key == "max_jobs" and value < 0:
        raise source.error(f"max_jobs must be 0 or more, got {value}", *where)
    if key == "speed_factor" and value < 1:
        raise source.error(f"speed_factor must be 1 or more, got {value}", *where)


def _builder(entry: Any, i: int, args: dict[str, Any], source: Source, inventory: Inventory) -> Builder:
    spec: dict[str, Any] = {"host": entry} if isinstance(entry, str) else dict(entry)
    key = yamlsrc.first_unknown(spec, BUILDER_KEYS)
    if key is not None:
        raise source.error(
            f"builders[{i}]: {yamlsrc.unknown_key_message(key, BUILDER_KEYS)}", "builders", i, key
        )
    if not isinstance(spec.get("host"), str):
        raise source.error(f"builders[{i}] needs 'host: <inventory name>'", "builders", i)
    # Any sshd port works: clients reach the builder through an ssh_config alias.
    host = _known(spec["host"], "builder", source, inventory, ("builders", i, "host"))
    systems = spec.get("systems", [host.system])
    if isinstance(systems, str):
        systems = [systems]
    if not isinstance(systems, list) or not systems:
        raise source.error(f"builders[{i}].systems must be a non-empty list", "builders", i, "systems")
    for j, system in enumerate(systems):
        problem = check_system(system)
        if problem:
            raise source.error(f"builder {host.name!r}: {problem}", "builders", i, "systems", j)
    values: dict[str, Any] = {}
    for key in ("max_jobs", "speed_factor"):
        values[key] = spec.get(key, args[key])
        _check_counts(values[key], key, source, ("builders", i, key) if key in spec else (key,))
    for key in ("supported_features", "mandatory_features"):
        values[key] = spec.get(key, args[key])
        problem = _check_features(values[key])
        if problem:
            raise source.error(f"builder {host.name!r}: {key}: {problem}", "builders", i, key)
    user = spec.get("ssh_user", args["ssh_user"])
    problem = _check_user(user)
    if problem:
        raise source.error(f"builder {host.name!r}: {problem}", "builders", i, "ssh_user")
    return Builder(
        host=host,
        systems=tuple(dict.fromkeys(systems)),
        max_jobs=values["max_jobs"],
        speed_factor=values["speed_factor"],
        supported_features=tuple(values["supported_features"]),
        mandatory_features=tuple(values["mandatory_features"]),
        user=user,
    )
