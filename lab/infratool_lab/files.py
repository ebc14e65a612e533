"""Every file the lab writes: host trees, keys, sshd/nix config, the inventory.

A lab host's private directories live under ``<lab>/<name>/`` and are
bind-mounted over the real ones inside the host's mount namespace, so the
controller reads ``<lab>/snix/etc/nix/nix.conf`` while processes on snix read
``/etc/nix/nix.conf``. Nothing here starts a process; :mod:`.fleet` does.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

# Directories each host gets privately. /nix is mandatory: with one shared
# store a remote build deadlocks on the output path's lock (REFERENCE.md).
# /run holds sshd's privilege-separation dir /run/sshd; /usr/local/sbin is on
# sshd's root PATH, so a tool (the sbctl emulator) can live on some hosts only.
PRIVATE_DIRS: tuple[str, ...] = (
    "/etc/ssh",
    "/root",
    "/etc/nix",
    "/var/lib",
    "/nix",
    "/tmp",
    "/run",
    "/var/log",
    "/usr/local/sbin",
)

# A random token only processes inside the host can see at this path; it is
# how the lab recognises its own processes (see procs.py) without trusting pids.
TOKEN_PATH = "/etc/ssh/infratool-lab-id"
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"
SSHD_CONFIG_PATH = "/etc/ssh/sshd_config"
SSHD_LOG_PATH = "/var/log/sshd.log"
NIX_CONF_PATH = "/etc/nix/nix.conf"
AUTHORIZED_KEYS_PATH = "/root/.ssh/authorized_keys"

_DIR_MODES = {"/root": 0o700, "/root/.ssh": 0o700, "/tmp": 0o1777}


def host_path(root: Path, remote: str) -> Path:
    """Where the remote absolute path ``remote`` of a host lives on the controller.

    Only paths inside the host's private directories have a private copy; any
    other path is the controller's own file, so asking for it is an error.
    """
    if not remote.startswith("/"):
        raise ValueError(f"{remote!r} is not an absolute path")
    normal = os.path.normpath(remote)
    for private in PRIVATE_DIRS:
        if normal == private or normal.startswith(private + "/"):
            return root / normal.lstrip("/")
    raise ValueError(
        f"{remote} is not private to a lab host (private: {', '.join(PRIVATE_DIRS)}); "
        "the host sees the controller's own file there"
    )


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``path`` via a temp file in the same directory and a rename.

    A reader (a running sshd, a test) never sees a half-written file, and a
    private key never exists with a wider mode than asked.
    """
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_ed25519(comment: str) -> tuple[bytes, str]:
    """A new ed25519 key pair as (OpenSSH private key bytes, ``ssh-ed25519 AAAA... comment``).

    Generated in-process (the same format ``ssh-keygen -t ed25519`` writes)
    because a subprocess per host would dominate start-up of a 64-host lab.
    """
    # Imported here: cryptography costs import time the CLI should not pay
    # unless it actually creates a lab.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


def write_key_pair(private_path: Path, comment: str) -> str:
    """Create a key pair at ``private_path`` (+ ``.pub``); return the public line."""
    private, public = generate_ed25519(comment)
    atomic_write(Path(f"{private_path}.pub"), public + "\n", 0o644)
    atomic_write(private_path, private, 0o600)
    return public


def public_key_of(private_path: Path) -> str:
    """``type base64`` of the ``.pub`` beside ``private_path``, without the comment."""
    fields = Path(f"{private_path}.pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


def sshd_config(address: str, port: int = 22, nixos: bool = False) -> str:
    """The sshd_config of a lab host listening on ``address:port``.

    A NixOS-shaped host also reads ``/etc/ssh/authorized_keys.d/%u``, where
    NixOS's activation puts ``users.users.<name>.openssh.authorizedKeys``.
    """
    keys = ".ssh/authorized_keys /etc/ssh/authorized_keys.d/%u" if nixos else ".ssh/authorized_keys"
    return f"""\
# written by infratool's lab; rewritten on every `lab up`
ListenAddress {address}:{port}
HostKey {HOST_KEY_PATH}
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {keys}
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
# No PAM: the lab hosts share the controller's /etc/pam.d and accounts.
UsePAM no
# VERBOSE logs the fingerprint of every key that logs in and every session,
# so a test can prove which key got in and that nothing ran after a refusal.
LogLevel VERBOSE
# Lab trees may live under /tmp; ownership checks would only get in the way.
StrictModes no
# Benchmarks open one connection per host from many threads at once.
MaxStartups 200
MaxSessions 50
LoginGraceTime 30
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp
# AcceptEnv: deliberately none; nothing reaches a session through the environment.
"""


def nix_conf() -> str:
    """A lab host's initial nix.conf (tasks may add to it later)."""
    return """\
# written by infratool's lab when the host was created
# Debian's nix: the sandbox does not work here.
sandbox = false
# No cache is reachable from the lab; a default substituter makes every build
# wait on retries.
substituters =
# Root builds itself; the hosts have no nixbld users.
build-users-group =
"""


@dataclass(frozen=True)
class HostSpec:
    """What a lab host should be: its name, loopback address, inventory tags and sshd port."""

    name: str
    address: str
    tags: tuple[str, ...]
    port: int = 22
    nixos: bool = False
    """A NixOS-shaped host (``lab up --nixos``): system profile, activation, ``os: nixos``."""

    @property
    def runs_nix_daemon(self) -> bool:
        """Builders run a nix-daemon: their clients log in as an unprivileged user that needs one."""
        return "builder" in self.tags


def prepare_host(root: Path, spec: HostSpec, admin_public: str) -> bool:
    """Create or update the private tree of one host under ``root``.

    Returns True when sshd_config changed (a running sshd must be restarted to
    listen on the new address). Files a task may have changed since (nix.conf,
    extra authorized keys) are created once and never overwritten.
    """
    for remote in (*PRIVATE_DIRS, "/root/.ssh", "/run/sshd"):
        path = root / remote.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        # chmod explicitly: mkdir's mode is filtered by the umask, and /tmp
        # must be world-writable with the sticky bit for services to use it.
        path.chmod(_DIR_MODES.get(remote, 0o755))

    token = host_path(root, TOKEN_PATH)
    if not token.exists():
        atomic_write(token, secrets.token_hex(16) + "\n", 0o644)
    key = host_path(root, HOST_KEY_PATH)
    if not key.exists():
        write_key_pair(key, f"root@{spec.name}")
    conf = host_path(root, NIX_CONF_PATH)
    if not conf.exists():
        atomic_write(conf, nix_conf())

    keys = host_path(root, AUTHORIZED_KEYS_PATH)
    present = keys.read_text() if keys.exists() else ""
    admin = " ".join(admin_public.split()[:2])
    if admin not in present:
        # Append, not replace: tasks add their own keys (builder keys) here.
        sep = "" if not present or present.endswith("\n") else "\n"
        atomic_write(keys, f"{present}{sep}{admin_public}\n", 0o600)

    config = host_path(root, SSHD_CONFIG_PATH)
    wanted = sshd_config(spec.address, spec.port, spec.nixos)
    if config.exists() and config.read_text() == wanted:
        return False
    atomic_write(config, wanted)
    return True


def read_token(root: Path) -> str | None:
    """The identity token of the host tree at ``root``, or None if it has none."""
    try:
        return host_path(root, TOKEN_PATH).read_text().strip() or None
    except OSError:
        return None


def _scalar(value: str) -> str:
    """``value`` as a YAML flow scalar: bare when that reads back the same, else quoted."""
    plain = value.replace("_", "").replace("-", "").replace(".", "").replace("/", "")
    if plain.isalnum() and yaml.safe_load(value) == value:
        return value
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(value)


def _flow_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_scalar(i) for i in items) + "]"


def render_inventory(hosts: Sequence[tuple[HostSpec, str]], ssh_key: Path, flake: Path, system: str) -> str:
    """The lab's hosts.yaml (DESIGN.md "Inventory"), one flow mapping per host.

    ``hosts`` pairs each spec with its host key line (``ssh-ed25519 AAAA...``).
    """
    lines = [
        "# written by `infratool lab up`; host keys pinned from the lab's sshd host keys",
        f"defaults: {{user: root, port: 22, ssh_key: {_scalar(str(ssh_key))}, flake: {_scalar(str(flake))}}}",
        "hosts:",
    ]
    for spec, host_key in hosts:
        port = f"port: {spec.port}, " if spec.port != 22 else ""
        lines.append(
            f"  {_scalar(spec.name)}: {{address: {_scalar(spec.address)}, {port}os: {'nixos' if spec.nixos else 'linux'}, "
            f"system: {_scalar(system)}, tags: {_flow_list(spec.tags)}, "
            f"host_key: {json.dumps(host_key)}}}"
        )
    return "\n".join(lines) + "\n"


def render_known_hosts(hosts: Sequence[tuple[HostSpec, str]]) -> str:
    """An OpenSSH known_hosts for the lab, for ``ssh -o UserKnownHostsFile=...`` by hand."""
    # OpenSSH names a host on another port [address]:port.
    return "".join(
        f"{spec.address if spec.port == 22 else f'[{spec.address}]:{spec.port}'} {key}\n"
        for spec, key in hosts
    )
