"""The inventory: ``hosts.yaml`` → :class:`Host` objects, and host selection.

Schema (DESIGN.md "Inventory")::

    defaults: {user, port, ssh_key, known_hosts, flake, deploy_command}
    hosts:
      NAME: {address, port, user, ssh_key, os: nixos|linux, system, tags,
             host_key: "ssh-ed25519 AAAA...", deploy_command}

Every problem is an :class:`~infratool.errors.InputError` naming the file and
line, raised before any connection is opened.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from infratool import knownhosts, yamlsrc
from infratool.errors import InputError
from infratool.suggest import did_you_mean

DEFAULT_INVENTORY = "hosts.yaml"
DEFAULT_DEPLOY = "nixos-rebuild switch --flake {flake}#{host} --target-host {user}@{address}"
OS_KINDS = ("nixos", "linux")
HOST_KEYS = {
    "address",
    "port",
    "user",
    "ssh_key",
    "os",
    "system",
    "tags",
    "host_key",
    "known_hosts",
    "flake",
    "deploy_command",
}
DEFAULT_KEYS = {"user", "port", "ssh_key", "known_hosts", "flake", "deploy_command", "os", "system"}
# Host names become file names (generated Nix), flake attributes and log keys:
# keep them to what DNS and Nix attribute names both accept.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9.:-]+$")
_SYSTEM_RE = re.compile(r"^[a-z0-9_]+-[a-z0-9_]+$")
# Paths end up in generated files (systemd units, ssh options, Nix): a newline
# or other control character there would inject a line of its own.
PATH_KEYS = ("ssh_key", "known_hosts", "flake")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Host:
    """One managed machine, with every default already applied."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    ssh_key: Path | None = None
    os: str = "linux"
    system: str = "x86_64-linux"
    tags: tuple[str, ...] = ()
    host_keys: tuple[str, ...] = ()
    """Pinned public keys (``"ssh-ed25519 AAAA..."``); empty means none pinned."""
    flake: Path = Path(".")
    deploy_command: str | None = None
    """An escape hatch (``nixos-rebuild ...``) run on the controller instead of infratool's deploy engine."""
    line: int | None = field(default=None, compare=False)

    @property
    def is_nixos(self) -> bool:
        """NixOS hosts are configured declaratively through the flake repo."""
        return self.os == "nixos"

    def deploy_argv(self) -> list[str]:
        """The deploy command (``deploy_command``, else :data:`DEFAULT_DEPLOY`) filled in, as argv."""
        values = {
            "flake": str(self.flake),
            "host": self.name,
            "user": self.user,
            "address": self.address,
            "port": str(self.port),
        }
        return [part.format(**values) for part in shlex.split(self.deploy_command or DEFAULT_DEPLOY)]


@dataclass(frozen=True)
class Inventory:
    """All hosts of one inventory file, in file order."""

    path: Path
    hosts: dict[str, Host]

    def __iter__(self):
        return iter(self.hosts.values())

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @property
    def names(self) -> set[str]:
        """The set of host names, for validating references in playbooks and policies."""
        return set(self.hosts)

    @property
    def flake(self) -> Path:
        """The flake repo (from defaults; every host normally shares it)."""
        first = next(iter(self.hosts.values()), None)
        return first.flake if first else self.path.parent

    def select(self, pattern: str | None) -> list[Host]:
        """Hosts matching a ``--limit`` expression (see :func:`select`)."""
        return select(self, pattern)


def resolve_path(explicit: str | Path | None) -> Path:
    """The inventory to use: ``-i``, else ``$INFRATOOL_INVENTORY``, else ``./hosts.yaml``."""
    return Path(explicit or os.environ.get("INFRATOOL_INVENTORY") or DEFAULT_INVENTORY)


def load(path: str | Path) -> Inventory:
    """Load and validate an inventory file."""
    path = Path(path)
    data = yamlsrc.load(path)
    return parse(data, path)


def parse(data: object, path: Path) -> Inventory:
    """Validate parsed YAML ``data`` from ``path`` into an :class:`Inventory`."""
    data = yamlsrc.mapping(data, "inventory must be a mapping with 'hosts:'", path, 1)
    yamlsrc.check_keys(data, ("defaults", "hosts"), path, "at the top level")
    defaults = yamlsrc.mapping(
        data.get("defaults") or {}, "'defaults' must be a mapping", path, yamlsrc.line_of(data, "defaults")
    )
    yamlsrc.check_keys(defaults, DEFAULT_KEYS, path, "in defaults")
    _check_paths(defaults, "defaults", path, yamlsrc.line_of(data, "defaults"))
    hosts_data = data.get("hosts")
    if not isinstance(hosts_data, dict) or not hosts_data:
        raise InputError(
            "'hosts' must be a non-empty mapping of host name → settings",
            file=path,
            line=yamlsrc.line_of(data, "hosts") or 1,
        )
    base = path.parent
    known_hosts = _load_known_hosts(defaults, base, path)
    hosts: dict[str, Host] = {}
    for name, spec in hosts_data.items():
        line = yamlsrc.line_of(hosts_data, name)
        hosts[str(name)] = _parse_host(str(name), spec, defaults, known_hosts, base, path, line)
    return Inventory(path=path, hosts=hosts)


def _parse_host(
    name: str,
    spec: object,
    defaults: dict,
    known_hosts: list[knownhosts.Entry],
    base: Path,
    path: Path,
    line: int | None,
) -> Host:
    if not _NAME_RE.match(name):
        raise InputError(
            f"invalid host name {name!r}: use letters, digits, '-' and '_'", file=path, line=line
        )
    if spec is None:
        spec = {}
    spec = yamlsrc.mapping(spec, f"host {name!r} must be a mapping of settings", path, line)

    def where(key: str) -> int | None:
        return yamlsrc.line_of(spec, key) or line

    yamlsrc.check_keys(spec, HOST_KEYS, path, f"for host {name!r}", line)
    _check_paths(spec, f"host {name!r}", path, line)
    merged = {**defaults, **spec}
    address = merged.get("address")
    if not address:
        raise InputError(f"host {name!r} has no 'address'", file=path, line=line)
    if not isinstance(address, str) or not _ADDRESS_RE.match(address):
        raise InputError(f"host {name!r}: invalid address {address!r}", file=path, line=where("address"))
    port = merged.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InputError(f"host {name!r}: port must be 1-65535, got {port!r}", file=path, line=where("port"))
    user = merged.get("user", "root")
    if not isinstance(user, str) or not re.match(r"^[a-z_][a-z0-9_-]*$", user):
        raise InputError(f"host {name!r}: invalid user {user!r}", file=path, line=where("user"))
    os_kind = merged.get("os", "linux")
    if os_kind not in OS_KINDS:
        raise InputError(
            f"host {name!r}: os must be one of {', '.join(OS_KINDS)}, got {os_kind!r}",
            file=path,
            line=where("os"),
        )
    system = merged.get("system", "x86_64-linux")
    if not isinstance(system, str) or not _SYSTEM_RE.match(system):
        raise InputError(f"host {name!r}: invalid system {system!r}", file=path, line=where("system"))
    tags = spec.get("tags", [])
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InputError(f"host {name!r}: tags must be a list of strings", file=path, line=where("tags"))
    ssh_key = merged.get("ssh_key")
    host_keys: list[str] = []
    inline = spec.get("host_key")
    if inline is not None:
        if not isinstance(inline, str) or len(inline.split()) < 2:
            raise InputError(
                f"host {name!r}: host_key must look like 'ssh-ed25519 AAAA...'",
                file=path,
                line=where("host_key"),
            )
        host_keys.append(" ".join(inline.split()[:2]))
    pinned, revoked = knownhosts.keys_for(known_hosts, address, port)
    # @revoked wins over every pin, the inline one too (as in OpenSSH).
    host_keys = [k for k in (*host_keys, *pinned) if k not in revoked]
    deploy = merged.get("deploy_command")
    if deploy is not None and not isinstance(deploy, str):
        raise InputError(
            f"host {name!r}: deploy_command must be a string", file=path, line=where("deploy_command")
        )
    return Host(
        name=name,
        address=address,
        port=port,
        user=user,
        ssh_key=_expand(ssh_key, base) if ssh_key else None,
        os=os_kind,
        system=system,
        tags=tuple(tags),
        host_keys=tuple(dict.fromkeys(host_keys)),
        flake=_expand(merged.get("flake", "."), base),
        deploy_command=deploy,
        line=line,
    )


def _check_paths(settings: dict, where: str, path: Path, line: int | None) -> None:
    """Refuse a path setting that is not a string or holds a control character."""
    for key in PATH_KEYS:
        value = settings.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or _CONTROL_RE.search(value):
            raise InputError(
                f"{where}: {key} must be a path without control characters (newline...), got {value!r}",
                file=path,
                line=yamlsrc.line_of(settings, key) or line,
            )


def _expand(value: object, base: Path) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else (base / p)


def _load_known_hosts(defaults: dict, base: Path, path: Path) -> list[knownhosts.Entry]:
    """Parse the pinned known_hosts file (see :mod:`infratool.knownhosts`).

    A missing file is fine (hosts may pin inline).
    """
    name = defaults.get("known_hosts")
    if not name:
        return []
    kh = _expand(name, base)
    if not kh.exists():
        return []
    try:
        text = kh.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        # A directory, an unreadable or a binary file: say so, at the setting.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(
            f"known_hosts {str(kh)!r} cannot be read: {reason}",
            file=path,
            line=yamlsrc.line_of(defaults, "known_hosts"),
        ) from None
    return knownhosts.parse(text, kh)


def select(inventory: Inventory, pattern: str | Iterable[str] | None) -> list[Host]:
    """Hosts matching a ``--limit`` expression, in inventory order.

    The expression is a list of terms separated by ``,`` (or Ansible's
    ``:&``/``:!``): a host name, a glob (``nix*``), ``tag:NAME`` or colmena's
    ``@NAME``, or ``all``. Plain terms add hosts; a term starting with ``&``
    keeps only hosts it also matches (intersection); one starting with ``!``
    removes hosts. Only ``&``/``!`` terms → they apply to every host. A term
    matching nothing is an error with a did-you-mean hint (a typo must not
    silently select nothing), and so is an empty result.
    """
    if pattern is None:
        return list(inventory)
    given = [pattern] if isinstance(pattern, str) else list(pattern)
    terms = [t.strip() for text in given for t in _split_terms(text) if t.strip()]
    include = [t for t in terms if t[0] not in "!&"]
    intersect = [t[1:] for t in terms if t.startswith("&")]
    exclude = [t[1:] for t in terms if t.startswith("!")]
    chosen: set[str] = set() if include else set(inventory.hosts)
    for sign, group in (("", include), ("&", intersect), ("!", exclude)):
        for term in group:
            matched = _match(inventory, term)
            if not matched:
                raise InputError(
                    f"--limit '{sign}{term}' matches no host in {inventory.path}{_hint(inventory, term)}"
                )
            if sign == "":
                chosen |= matched
            elif sign == "&":
                chosen &= matched
            else:
                chosen -= matched
    if not chosen:
        raise InputError(f"--limit {', '.join(given)!r} selects no host in {inventory.path}")
    return [h for h in inventory if h.name in chosen]


def _split_terms(text: str) -> list[str]:
    # Ansible spells intersection and exclusion ':&x' and ':!x'; a ':' alone
    # belongs to 'tag:NAME'.
    return text.replace(":&", ",&").replace(":!", ",!").split(",")


def _tag_of(term: str) -> str | None:
    if term.startswith("tag:"):
        return term[4:]
    if term.startswith("@"):
        return term[1:]
    return None


def tags(inventory: Inventory) -> set[str]:
    """Every tag used in the inventory."""
    return {t for h in inventory for t in h.tags}


def _hint(inventory: Inventory, term: str) -> str:
    tag = _tag_of(term)
    if tag is not None:
        prefix = "@" if term.startswith("@") else "tag:"
        hint = did_you_mean(tag, tags(inventory), fmt=f"'{prefix}{{}}'")
        return hint or f" (tags: {', '.join(sorted(tags(inventory))) or 'none'})"
    return did_you_mean(term, inventory.hosts) or did_you_mean(term, tags(inventory), fmt="'@{}'")


def _match(inventory: Inventory, term: str) -> set[str]:
    if term == "all":
        return set(inventory.hosts)
    tag = _tag_of(term)
    if tag is not None:
        return {h.name for h in inventory if tag in h.tags}
    return {h.name for h in inventory if fnmatch.fnmatchcase(h.name, term)}
