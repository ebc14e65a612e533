"""The lab: a real fleet of sshd hosts on one machine (DESIGN.md "The lab").

Each lab host is a real ``/usr/sbin/sshd -D`` in its own mount (and UTS)
namespace, started by ``unshare`` *without* ``--fork`` so the pid recorded is
sshd's own once the boot script ``exec``s it. The boot script bind-mounts the
host's private directories (:data:`infratool.lab.files.PRIVATE_DIRS`, kept
under ``<lab>/<name>/``) over the real ones; the mounts die with the
namespace, so nothing is ever unmounted by hand. Every host listens on port
22 of its own loopback address ``<subnet>.<10+i>`` because Nix 2.8's
``ssh-ng://`` URIs cannot carry a port.

Layout of a lab directory::

    <lab>/lab.json             subnet and hosts of the last `up`
    <lab>/hosts.yaml           the inventory (host keys pinned)
    <lab>/known_hosts          the same keys for `ssh -o UserKnownHostsFile=`
    <lab>/id_ed25519{,.pub}    admin key, authorised for root everywhere
    <lab>/flake/               generated files of the lab's flake repo
    <lab>/<name>/etc/ssh/...   a host's private tree (see files.py)
    <lab>/<name>/sshd.pid      the host's sshd pid
    <lab>/<name>/boot.log      stderr of the boot script (mount errors)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infratool.errors import CommandFailed, InputError
from infratool.lab import files, procs
from infratool.lab.errors import AddressInUseError, LabError, LabUnavailable
from infratool.lab.files import HostSpec

FLEET: dict[str, list[str]] = {
    "snix": ["workstation", "builder", "cache"],
    "slax": ["laptop"],
    "brix": ["server"],
    "nixtv-player": ["media"],
}
"""The default lab hosts and their tags, as in the real fleet's hosts.yaml."""

EXTRA_TAGS: tuple[str, ...] = ("scale",)
"""Tags of the hosts beyond the four (lab05, lab06, ...) of a scale lab."""

MAX_HOSTS = 200
DEFAULT_SUBNET = "127.0.0"
SSHD = "/usr/sbin/sshd"
# The PATH sshd gives root sessions on Debian; exec() uses it too, so a
# command behaves the same through Lab.exec as over SSH.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TOOLS = {"unshare": "util-linux", "nsenter": "util-linux", "mount": "mount"}
_READY_TIMEOUT = 30.0

# Runs inside the new namespaces, then becomes sshd (same pid). Arguments:
# host tree, host name, sshd binary, then the directories to mount in order.
_BOOT = r"""
set -e
tree=$1 name=$2 sshd=$3
shift 3
for dir in "$@"; do mount --bind "$tree$dir" "$dir"; done
printf '%s\n' "$name" > /proc/sys/kernel/hostname
exec "$sshd" -D -f /etc/ssh/sshd_config -E /var/log/sshd.log
"""


@dataclass(frozen=True)
class LabHost:
    """One lab host: its name, loopback address and private tree on the controller."""

    name: str
    address: str
    root: Path
    tags: tuple[str, ...] = ()

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


def _validate_subnet(subnet: str) -> str:
    parts = subnet.split(".")
    if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts) or parts[0] != "127":
        raise InputError(f"lab subnet {subnet!r} must be three octets inside loopback, like 127.0.0")
    return subnet


def _nix_system() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine) + "-linux"


class Lab:
    """A lab directory and the sshd hosts running from it.

    ``Lab(root)`` reopens an existing lab with the subnet it was started on;
    pass ``subnet`` to choose one (several labs can run at once on different
    subnets). Every operation needs root; :meth:`preflight` says why not.
    """

    def __init__(self, root: Path | str, subnet: str | None = None) -> None:
        self.root = Path(root).resolve()
        state = self._load_state()
        self.subnet = _validate_subnet(subnet or state.get("subnet") or DEFAULT_SUBNET)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._tools: dict[str, str] = {}

    # -- paths --------------------------------------------------------------

    @property
    def inventory_path(self) -> Path:
        """The lab inventory, ``<lab>/hosts.yaml``."""
        return self.root / "hosts.yaml"

    @property
    def known_hosts_path(self) -> Path:
        """The lab's host keys in OpenSSH known_hosts format."""
        return self.root / "known_hosts"

    @property
    def admin_key(self) -> Path:
        """The private key authorised for root on every host."""
        return self.root / "id_ed25519"

    @property
    def flake_dir(self) -> Path:
        """The lab's flake repo directory (empty until tasks generate files)."""
        return self.root / "flake"

    def _host_root(self, name: str) -> Path:
        return self.root / name

    # -- checks -------------------------------------------------------------

    def preflight(self) -> None:
        """Raise :class:`LabUnavailable` unless this machine can run a lab."""
        if not sys.platform.startswith("linux"):
            raise LabUnavailable("the lab needs Linux (mount namespaces)")
        if os.geteuid() != 0:
            raise LabUnavailable("the lab needs root: it bind-mounts private directories and binds port 22")
        if not os.access(SSHD, os.X_OK):
            raise LabUnavailable(f"{SSHD} not found; install openssh-server")
        for tool, package in _TOOLS.items():
            found = shutil.which(tool, path=ROOT_PATH)
            if found is None:
                raise LabUnavailable(f"{tool} not found; install {package}")
            self._tools[tool] = found

    @staticmethod
    def check_address_free(address: str) -> None:
        """Raise :class:`AddressInUseError` if something listens on ``address:22``.

        SO_REUSEADDR makes the probe ignore TIME_WAIT leftovers of a previous
        lab (sshd sets it too) and fail only on a real listener.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, 22))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(address) from None
                raise LabError(f"cannot bind {address}:22: {exc.strerror}") from None

    # -- state --------------------------------------------------------------

    def _load_state(self) -> dict:
        try:
            return json.loads((self.root / "lab.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, specs: Sequence[HostSpec]) -> None:
        state = {
            "subnet": self.subnet,
            "hosts": [{"name": s.name, "address": s.address, "tags": list(s.tags)} for s in specs],
        }
        files.atomic_write(self.root / "lab.json", json.dumps(state, indent=1) + "\n")

    def _specs_from_state(self) -> list[HostSpec]:
        return [
            HostSpec(h["name"], h["address"], tuple(h["tags"])) for h in self._load_state().get("hosts", [])
        ]

    def _wanted_specs(self, count: int | None) -> list[HostSpec]:
        count = len(FLEET) if count is None else count
        if not 1 <= count <= MAX_HOSTS:
            raise InputError(f"a lab has 1 to {MAX_HOSTS} hosts, not {count}")
        named = [(n, tuple(t)) for n, t in FLEET.items()][:count]
        extra = [(f"lab{i:02d}", EXTRA_TAGS) for i in range(len(named) + 1, count + 1)]
        return [
            HostSpec(name, f"{self.subnet}.{10 + i}", tags) for i, (name, tags) in enumerate(named + extra)
        ]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lab operation at a time, across processes (two `lab up`s) and
        # threads alike: flock conflicts between separate open files.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _tokens(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """Identity tokens of the named hosts (default: every host tree in the lab)."""
        if names is None:
            names = [p.name for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        tokens = {}
        for name in names:
            token = files.read_token(self._host_root(name))
            if token:
                tokens[name] = token
        return tokens

    def _read_pid(self, name: str) -> int | None:
        try:
            return int((self._host_root(name) / "sshd.pid").read_text())
        except (OSError, ValueError):
            return None

    def _running_pid(self, name: str, members: procs.Members | None = None) -> int | None:
        pid = self._read_pid(name)
        if pid is None:
            return None
        if members is None:
            members = procs.scan(self._tokens([name])).get(name, {})
        return pid if procs.is_running(pid, members, "sshd") else None

    # -- queries ------------------------------------------------------------

    def hosts(self) -> list[LabHost]:
        """The hosts of the last :meth:`up`, in inventory order (running or not)."""
        return [LabHost(s.name, s.address, self._host_root(s.name), s.tags) for s in self._specs_from_state()]

    def host(self, name: str) -> LabHost:
        """The lab host called ``name``; LabError if the lab has none."""
        for host in self.hosts():
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts()) or "none (run `infratool lab up`)"
        raise LabError(f"no lab host named {name!r}; hosts: {known}")

    def status(self) -> list[HostStatus]:
        """Name, address, sshd pid and liveness of every host."""
        specs = self._specs_from_state()
        found = procs.scan(self._tokens([s.name for s in specs]))
        rows = []
        for spec in specs:
            members = found.get(spec.name, {})
            pid = self._running_pid(spec.name, members)
            rows.append(HostStatus(spec.name, spec.address, pid, pid is not None, len(members)))
        return rows

    # -- lifecycle ----------------------------------------------------------

    def up(self, count: int | None = None) -> list[LabHost]:
        """Start the lab (idempotent) and write its inventory; return its hosts.

        ``count`` None means the four fleet hosts; fewer takes the first
        ``count``; more adds lab05, lab06, ... A running host is left alone, a
        dead one is started afresh, hosts beyond ``count`` from an earlier,
        larger lab are stopped. Raises AddressInUseError before starting
        anything if an address is taken.
        """
        specs = self._wanted_specs(count)
        self.preflight()
        with self._locked():
            admin_public = self._ensure_admin_key()
            self.flake_dir.mkdir(exist_ok=True)
            wanted = {s.name for s in specs}
            dropped = [s.name for s in self._specs_from_state() if s.name not in wanted]
            self._stop(dropped)

            changed = {s.name: files.prepare_host(self._host_root(s.name), s, admin_public) for s in specs}
            found = procs.scan(self._tokens([s.name for s in specs]))
            to_start = [
                s
                for s in specs
                if changed[s.name] or self._running_pid(s.name, found.get(s.name, {})) is None
            ]
            # A (re)started host boots clean: leftovers of its previous life
            # (a service whose sshd died, an sshd on an old address) go first.
            self._stop([s.name for s in to_start])
            self._save_state(specs)
            self._start(to_start)
            self._write_inventory(specs)
        return self.hosts()

    def down(self) -> None:
        """Stop every process of every host of this lab and wait until they are gone.

        Only processes that see one of this lab's host tokens are touched;
        files stay, so logs can be read afterwards and ``up`` resumes.
        """
        with self._locked():
            self._stop(list(self._tokens()))

    def stop_host(self, name: str) -> None:
        """Take one host down (sshd and everything running inside it)."""
        self.host(name)
        with self._locked():
            self._stop([name])

    def start_host(self, name: str) -> None:
        """Bring a stopped host back (a no-op when it runs)."""
        host = self.host(name)
        self.preflight()
        spec = HostSpec(host.name, host.address, host.tags)
        with self._locked():
            if self._running_pid(name) is None:
                self._stop([name])
                self._start([spec])

    def regenerate_host_key(self, name: str) -> str:
        """Give the host a new sshd host key (inventory untouched); return it.

        sshd re-reads its keys on SIGHUP (it re-execs itself with the same
        pid), so services running inside the host survive.
        """
        host = self.host(name)
        with self._locked():
            files.write_key_pair(host.path(files.HOST_KEY_PATH), f"root@{name}")
            members = procs.scan(self._tokens([name])).get(name, {})
            pid = self._running_pid(name, members)
            if pid is not None:
                offset = self._log_size(host)
                procs.send_signal(pid, members[pid], signal.SIGHUP)
                self._wait_ready({name: (host, None, offset)})
        return host.host_key_public

    def exec(
        self,
        name: str,
        cmd: Sequence[str] | str,
        input: bytes | None = None,
        check: bool = False,
        timeout: float | None = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``cmd`` inside host ``name``'s namespaces, as root in /root, without SSH.

        A string runs through ``/bin/sh -c``. The environment is what an SSH
        session gets (HOME, USER, PATH), plus ``env``. With ``check``, a
        non-zero exit raises CommandFailed. A command that leaves a daemon
        holding stdout open blocks until it closes it: redirect its output.
        """
        self.host(name)
        pid = self._running_pid(name)
        if pid is None:
            raise LabError(f"{name} is not running (run `infratool lab up`)")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if not self._tools:
            self.preflight()
        full = [
            self._tools["nsenter"],
            f"--target={pid}",
            "--mount",
            "--uts",
            "--",
            # setns() leaves the cwd at the namespace's /; SSH sessions start in $HOME.
            "/bin/sh",
            "-c",
            'cd /root && exec "$@"',
            "lab-exec",
            *argv,
        ]
        session_env = {
            "HOME": "/root",
            "USER": "root",
            "LOGNAME": "root",
            "SHELL": "/bin/bash",
            "PATH": ROOT_PATH,
            **(env or {}),
        }
        result = subprocess.run(
            full, input=input, capture_output=True, env=session_env, timeout=timeout, check=False
        )
        result.args = argv
        if check and result.returncode != 0:
            what = cmd if isinstance(cmd, str) else " ".join(cmd)
            raise CommandFailed(name, what, result.returncode, result.stderr.decode(errors="replace"))
        return result

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- internals ----------------------------------------------------------

    def _ensure_admin_key(self) -> str:
        if not (self.admin_key.exists() and Path(f"{self.admin_key}.pub").exists()):
            return files.write_key_pair(self.admin_key, "infratool-lab-admin")
        return Path(f"{self.admin_key}.pub").read_text().strip()

    def _stop(self, names: Sequence[str]) -> None:
        procs.terminate(self._tokens(names))
        for name in names:
            (self._host_root(name) / "sshd.pid").unlink(missing_ok=True)
            child = self._children.pop(name, None)
            if child is not None:
                # Reap our own child so it does not linger as a zombie.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=5)

    def _mount_order(self) -> list[str]:
        # The directory that contains the lab itself (a lab under /tmp, say)
        # is mounted last: once it is covered, the other sources would vanish.
        return sorted(files.PRIVATE_DIRS, key=lambda d: self.root.is_relative_to(Path(d)))

    @staticmethod
    def _log_size(host: LabHost) -> int:
        try:
            return host.sshd_log.stat().st_size
        except OSError:
            return 0

    def _start(self, specs: Sequence[HostSpec]) -> None:
        if not specs:
            return
        for spec in specs:
            self.check_address_free(spec.address)
        order = self._mount_order()
        pending: dict[str, tuple[LabHost, subprocess.Popen[bytes] | None, int]] = {}
        try:
            for spec in specs:
                host = LabHost(spec.name, spec.address, self._host_root(spec.name), spec.tags)
                self._clear_run(host)
                offset = self._log_size(host)
                with open(host.root / "boot.log", "wb") as boot_log:
                    child = subprocess.Popen(
                        [
                            self._tools["unshare"],
                            "--mount",
                            "--uts",
                            "--propagation",
                            "private",
                            "/bin/sh",
                            "-c",
                            _BOOT,
                            "lab-boot",
                            str(host.root),
                            spec.name,
                            SSHD,
                            *order,
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=boot_log,
                        stderr=boot_log,
                        env={"PATH": ROOT_PATH},
                        cwd="/",
                        # Own session: a Ctrl-C in the terminal that ran
                        # `lab up` must not take the lab down with it.
                        start_new_session=True,
                    )
                self._children[spec.name] = child
                (host.root / "sshd.pid").write_text(f"{child.pid}\n")
                pending[spec.name] = (host, child, offset)
            self._wait_ready(pending)
        except BaseException:
            self._stop(list(pending))
            raise

    @staticmethod
    def _clear_run(host: LabHost) -> None:
        # /run is volatile on a real machine; stale pid files and sockets of
        # a previous boot would stop services from starting again.
        run = host.path("/run")
        for entry in run.iterdir():
            if entry.name == "sshd":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _wait_ready(self, pending: dict[str, tuple[LabHost, subprocess.Popen[bytes] | None, int]]) -> None:
        """Wait until each host's sshd logs that it listens (after its log offset)."""
        waiting = dict(pending)
        deadline = time.monotonic() + _READY_TIMEOUT
        while waiting:
            for name, (host, child, offset) in list(waiting.items()):
                text = self._log_since(host, offset)
                if f"Server listening on {host.address} port 22." in text:
                    del waiting[name]
                elif child is not None and child.poll() is not None:
                    boot = (host.root / "boot.log").read_text(errors="replace")
                    detail = (boot + text).strip()
                    if "Address already in use" in detail:
                        raise AddressInUseError(host.address, f"sshd of {name} could not bind")
                    raise LabError(
                        f"{name}: sshd exited with status {child.returncode}: {detail[-2000:] or 'no output'}"
                    )
            if waiting and time.monotonic() > deadline:
                raise LabError(
                    f"sshd did not start listening within {_READY_TIMEOUT:.0f}s on: "
                    + ", ".join(sorted(waiting))
                )
            if waiting:
                time.sleep(0.005)

    @staticmethod
    def _log_since(host: LabHost, offset: int) -> str:
        try:
            with open(host.sshd_log, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _write_inventory(self, specs: Sequence[HostSpec]) -> None:
        pairs = [
            (s, files.public_key_of(files.host_path(self._host_root(s.name), files.HOST_KEY_PATH)))
            for s in specs
        ]
        text = files.render_inventory(pairs, self.admin_key, self.flake_dir, _nix_system())
        files.atomic_write(self.inventory_path, text)
        files.atomic_write(self.known_hosts_path, files.render_known_hosts(pairs))
