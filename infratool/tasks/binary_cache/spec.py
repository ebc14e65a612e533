"""What a binary cache is: its name, server, URL and the paths it uses on hosts.

Every ``binary_cache.*`` task takes the same few parameters that identify one
cache (:data:`CACHE_PARAMS`), validated before anything connects: the server
must be an inventory host, the key name must be a Nix key name, the URL must
be one Nix can substitute from. :func:`cache_spec` turns them into a
:class:`CacheSpec` every module shares, so a path like the key file is spelled
in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from infratool.inventory import Host
from infratool.tasks.base import Param
from infratool.tasks.lib.checks import check_abs_path

if TYPE_CHECKING:
    from infratool.tasks.base import Task

# Nix key names end up in nix.conf, narinfo "Sig:" lines and file names:
# letters, digits, dot, dash, underscore; no colon (it separates name:key).
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
URL_SCHEMES = ("http", "https", "file", "s3")
STATE_ROOT = "/var/lib/infratool/binary-cache"
DEFAULT_STORE_DIR = "/var/lib/nixcache"
NIX_CONF = "/etc/nix/nix.conf"


def check_key_name(value: str) -> str | None:
    """Param check: a Nix signing-key name (``snix-cache``; ``-1``, ``-2`` are appended)."""
    if not _KEY_NAME.match(value):
        return (
            f"invalid key name {value!r}: use 1-63 letters, digits, '.', '-' or '_' "
            "(it becomes the Nix key name '<name>-1')"
        )
    return None


def check_cache_url(value: str) -> str | None:
    """Param check: a URL Nix can use as a substituter (http, https, file or s3)."""
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        return f"invalid cache URL {value!r}: no spaces or control characters"
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES:
        return f"cache URL {value!r} must start with {', '.join(s + '://' for s in URL_SCHEMES)}"
    if parts.scheme in ("http", "https", "s3") and not parts.netloc:
        return f"cache URL {value!r} has no host (or bucket)"
    if parts.scheme == "file" and not parts.path.startswith("/"):
        return f"cache URL {value!r} needs an absolute path (file:///...)"
    return None


def check_store_dir(value: str) -> str | None:
    """Param check: an absolute directory that can sit in a ``file://`` URL unquoted."""
    problem = check_abs_path(value)
    if problem:
        return problem
    if not re.match(r"^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$", value):
        return f"use only letters, digits, '.', '-', '_' and '/' (it goes into a file:// URL), got {value!r}"
    return None


def check_port(value: int) -> str | None:
    """Param check: a TCP port."""
    return None if 0 < value < 65536 else f"must be 1-65535, got {value}"


def check_public_key(value: str) -> str | None:
    """Param check: a Nix public key ``name:base64(32 bytes)``."""
    import base64
    import binascii

    name, sep, b64 = value.partition(":")
    try:
        ok = bool(sep) and _KEY_NAME.match(name) and len(base64.b64decode(b64, validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    return None if ok else f"not a Nix public key (name:base64 of 32 bytes): {value!r}"


CACHE_PARAMS: dict[str, Param] = {
    "server": Param(str, required=True, help="inventory host that serves the cache"),
    "name": Param(
        str,
        help="signing key name; keys are <name>-1, <name>-2, ... (default: <server>-cache)",
        check=check_key_name,
    ),
    "port": Param(int, default=80, help="HTTP port on the server's address", check=check_port),
    "store_dir": Param(
        str, default=DEFAULT_STORE_DIR, help="cache directory on the server", check=check_store_dir
    ),
    "url": Param(
        str,
        help="URL clients substitute from (default http://<server address>[:port])",
        check=check_cache_url,
    ),
}
"""Parameters identifying one cache, shared by every ``binary_cache.*`` task."""


@dataclass(frozen=True)
class CacheSpec:
    """One binary cache, with every default filled in."""

    name: str
    """Key name base: the signing keys are ``<name>-1``, ``<name>-2``, ..."""
    server: Host | None
    """The serving host (None for an external cache: Cachix, Attic, ...)."""
    url: str
    port: int = 80
    store_dir: str = DEFAULT_STORE_DIR

    @property
    def state_dir(self) -> str:
        """Private per-cache directory on the server (key, nginx config, temp files)."""
        return f"{STATE_ROOT}/{self.name}"

    def key_file(self, host: Host) -> str:
        """Where the signing key lives on the server (0600; sops-nix's path on NixOS)."""
        if host.is_nixos:
            return f"/run/secrets/{self.sops_key('secret-key')}"
        return f"{self.state_dir}/secret-key"

    @property
    def nginx_conf(self) -> str:
        """The server's private nginx configuration (never /etc/nginx: shared in the lab)."""
        return f"{self.state_dir}/nginx.conf"

    @property
    def pid_file(self) -> str:
        """The nginx master's pid file."""
        return f"/run/infratool-binary-cache-{self.name}.pid"

    @property
    def log_dir(self) -> str:
        """nginx logs of this cache."""
        return f"/var/log/infratool-binary-cache/{self.name}"

    @property
    def unit(self) -> str:
        """systemd unit name (hosts with systemd)."""
        return f"infratool-binary-cache-{self.name}.service"

    @property
    def hook_script(self) -> str:
        """The post-build hook pushing local builds into the cache."""
        return f"{self.state_dir}/post-build-hook"

    @property
    def hook_conf(self) -> str:
        """nix.conf fragment naming the hook (included from nix.conf)."""
        return f"/etc/nix/binary-cache-{self.name}-hook.conf"

    @property
    def client_conf(self) -> str:
        """nix.conf fragment of a client: substituter and trusted keys (included from nix.conf)."""
        return f"/etc/nix/binary-cache-{self.name}.conf"

    def sops_key(self, which: str) -> str:
        """The sops key path of ``secret-key`` or ``next-secret-key``."""
        return f"binary-cache/{self.name}/{which}"

    def push_url(self, host: Host) -> str:
        """The signing ``file://`` store URL: the key's *path* is in it, never the key."""
        return f"file://{self.store_dir}?secret-key={self.key_file(host)}"

    def key_name(self, generation: int) -> str:
        """The Nix key name of one generation: ``<name>-<generation>``."""
        return f"{self.name}-{generation}"


def default_url(server: Host, port: int) -> str:
    """``http://<address>`` (with ``:port`` unless 80); IPv6 addresses bracketed."""
    host = f"[{server.address}]" if ":" in server.address else server.address
    return f"http://{host}" if port == 80 else f"http://{host}:{port}"


def validate_server(task: Task) -> None:
    """Checks shared by tasks with CACHE_PARAMS: the server is an inventory host; defaults."""
    args = task.args
    server = args.get("server")
    if server is not None and server not in task.inventory.names:
        raise task.source.error(
            f"{task.name}: server {server!r} is not a host of {task.inventory.path}", "server"
        )
    if args.get("name") is None and server is not None:
        derived = f"{server}-cache"
        problem = check_key_name(derived)
        if problem:
            raise task.source.error(f"{task.name}: give 'name': {problem}", "server")
        args["name"] = derived


def validate_hosts(task: Task, key: str) -> None:
    """Every name in the list parameter ``key`` is an inventory host (else file:line, exit 3)."""
    for i, name in enumerate(task.args.get(key) or []):
        if name not in task.inventory.names:
            raise task.source.error(
                f"{task.name}: {key}[{i}] {name!r} is not a host of {task.inventory.path}", key, i
            )


def cache_spec(task: Task) -> CacheSpec:
    """The :class:`CacheSpec` of a task's (validated) arguments."""
    args: dict[str, Any] = task.args
    server = task.inventory.hosts[args["server"]] if args.get("server") else None
    port = args.get("port") or 80
    url = args.get("url") or (default_url(server, port) if server else "")
    return CacheSpec(
        name=args["name"],
        server=server,
        url=url.rstrip("/"),
        port=port,
        store_dir=(args.get("store_dir") or DEFAULT_STORE_DIR).rstrip("/") or "/",
    )
