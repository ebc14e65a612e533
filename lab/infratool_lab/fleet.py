"""The lab: a real fleet of sshd hosts on one machine (DESIGN.md "The lab").

Each lab host is a real ``/usr/sbin/sshd -D`` in its own mount (and UTS)
namespace, started by ``unshare`` *without* ``--fork`` so the pid recorded is
sshd's own once the boot script ``exec``s it. The boot script bind-mounts the
host's private directories (:data:`infratool_lab.files.PRIVATE_DIRS`, kept
under ``<lab>/<name>/``) over the real ones; the mounts die with the
namespace, so nothing is ever unmounted by hand. Every host listens on port
22 of its own loopback address ``<subnet>.<10+i>``; :meth:`Lab.set_port`
moves one to another port (real fleets run sshd on 2222). Builders also run
a real ``nix-daemon``.

Layout of a lab directory::

    <lab>/lab.json             subnet and hosts of the last `up` (layout.py)
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
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from infratool.errors import CommandFailed, InputError
from infratool_lab import boot, files, layout, procs
from infratool_lab import nixos as nixoslab
from infratool_lab.errors import LabError, LabUnavailable
from infratool_lab.files import HostSpec
from infratool_lab.host import HostStatus, LabHost

SSHD = "/usr/sbin/sshd"
_TOOLS = {"unshare": "util-linux", "nsenter": "util-linux", "mount": "mount"}


class Lab:
    """A lab directory and the sshd hosts running from it.

    ``Lab(root)`` reopens an existing lab with the subnet it was started on;
    pass ``subnet`` to choose one (several labs can run at once on different
    subnets). Every operation needs root; :meth:`preflight` says why not.
    """

    def __init__(self, root: Path | str, subnet: str | None = None) -> None:
        self.root = Path(root).resolve()
        state = layout.load_state(self.root)
        self.subnet = layout.validate_subnet(subnet or state.get("subnet") or layout.DEFAULT_SUBNET)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._tools: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Lab({str(self.root)!r}, subnet={self.subnet!r})"

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
            found = shutil.which(tool, path=boot.ROOT_PATH)
            if found is None:
                raise LabUnavailable(f"{tool} not found; install {package}")
            self._tools[tool] = found

    @staticmethod
    def check_address_free(address: str) -> None:
        """Raise :class:`AddressInUseError` if something listens on ``address:22``."""
        boot.check_address_free(address)

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
        return [
            LabHost(s.name, s.address, self._host_root(s.name), s.tags, s.port, s.nixos)
            for s in layout.specs_from_state(self.root)
        ]

    def host(self, name: str) -> LabHost:
        """The lab host called ``name``; LabError if the lab has none."""
        for host in self.hosts():
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts()) or "none (run `infratool lab up`)"
        raise LabError(f"no lab host named {name!r}; hosts: {known}")

    def status(self) -> list[HostStatus]:
        """Name, address, sshd pid and liveness of every host."""
        specs = layout.specs_from_state(self.root)
        found = procs.scan(self._tokens([s.name for s in specs]))
        rows = []
        for spec in specs:
            members = found.get(spec.name, {})
            pid = self._running_pid(spec.name, members)
            rows.append(HostStatus(spec.name, spec.address, pid, pid is not None, len(members)))
        return rows

    # -- lifecycle ----------------------------------------------------------

    def up(self, count: int | None = None, nixos: bool | Sequence[str] | None = None) -> list[LabHost]:
        """Start the lab (idempotent) and write its inventory; return its hosts.

        ``count`` None means the four fleet hosts; fewer takes the first
        ``count``; more adds lab05, lab06, ... A running host is left alone, a
        dead one is started afresh, hosts beyond ``count`` from an earlier,
        larger lab are stopped. Raises AddressInUseError before starting
        anything if an address is taken.

        ``nixos`` makes hosts NixOS-shaped (:mod:`infratool_lab.nixos`): True
        for all, a list of names for some, False for none, None to keep what
        the last ``up`` chose. A NixOS host without a system profile gets its
        first generation built, installed and switched to.
        """
        specs = layout.wanted_specs(self.root, self.subnet, count, nixos)
        self.preflight()
        with self._locked():
            admin_public = self._ensure_admin_key()
            self.flake_dir.mkdir(exist_ok=True)
            wanted = {s.name for s in specs}
            dropped = [s.name for s in layout.specs_from_state(self.root) if s.name not in wanted]
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
            for spec in specs:
                if not spec.nixos:
                    # A host that is no longer NixOS-shaped must not boot its last generation.
                    nixoslab.forget_boot_default(self._host_root(spec.name))
            layout.save_state(self.root, self.subnet, specs)
            self._start(to_start)
            self._write_inventory(specs)
            self._first_generations([s for s in specs if s.nixos])
        return self.hosts()

    def down(self) -> None:
        """Stop every process of every host of this lab and wait until they are gone.

        Only processes that see one of this lab's host tokens are touched;
        files stay, so logs can be read afterwards and ``up`` resumes.
        """
        if not self.root.is_dir():
            return  # nothing was ever started here; do not create the directory
        with self._locked():
            self._stop(list(self._tokens()))

    def stop_host(self, name: str) -> None:
        """Take one host down (sshd and everything running inside it)."""
        self.host(name)
        with self._locked():
            self._stop([name])

    def start_host(self, name: str) -> None:
        """Bring a stopped host back (a no-op when it runs)."""
        self.host(name)
        self.preflight()
        spec = next(s for s in layout.specs_from_state(self.root) if s.name == name)
        with self._locked():
            if self._running_pid(name) is None:
                self._stop([name])
                self._start([spec])

    def set_port(self, name: str, port: int) -> LabHost:
        """Move ``name``'s sshd to ``port`` (real fleets run sshd on 2222, say); restart it.

        The inventory and known_hosts follow (``port:``, ``[address]:port``);
        the host's files stay, its processes are restarted with it.
        """
        self.host(name)
        if not 1 <= port <= 65535:
            raise InputError(f"port {port} is not a TCP port")
        self.preflight()
        with self._locked():
            specs = [
                HostSpec(s.name, s.address, s.tags, port if s.name == name else s.port, s.nixos)
                for s in layout.specs_from_state(self.root)
            ]
            spec = next(s for s in specs if s.name == name)
            files.atomic_write(
                files.host_path(self._host_root(name), files.SSHD_CONFIG_PATH),
                files.sshd_config(spec.address, port, spec.nixos),
            )
            self._stop([name])
            layout.save_state(self.root, self.subnet, specs)
            self._start([spec])
            self._write_inventory(specs)
        return self.host(name)

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
                waiting = boot.Booting(host, boot.log_size(host))
                procs.send_signal(pid, members[pid], signal.SIGHUP)
                boot.wait_ready({name: waiting})
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
            "PATH": boot.ROOT_PATH,
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

    def _start(self, specs: Sequence[HostSpec]) -> None:
        if not specs:
            return
        for spec in specs:
            boot.check_address_free(spec.address, spec.port)
        order = boot.mount_order(self.root)
        booting: dict[str, boot.Booting] = {}
        try:
            for spec in specs:
                host = LabHost(spec.name, spec.address, self._host_root(spec.name), spec.tags, spec.port)
                started = boot.start(host, order, self._tools["unshare"], SSHD, spec.runs_nix_daemon)
                booting[spec.name] = started
                if started.child is not None:
                    self._children[spec.name] = started.child
            boot.wait_ready(booting)
        except BaseException:
            self._stop(list(booting))
            raise

    def _first_generations(self, specs: Sequence[HostSpec]) -> None:
        """Give NixOS hosts the lab flake, sops, and (once) a first generation switched to."""
        if not specs:
            return
        nixoslab.write_flake(self.flake_dir, [(s.name, layout.nix_system()) for s in specs])
        for spec in specs:
            nixoslab.install_sops(self._host_root(spec.name))
        fresh = [
            s.name
            for s in specs
            if not os.path.lexists(files.host_path(self._host_root(s.name), nixoslab.PROFILE))
        ]
        built = nixoslab.build(self.flake_dir, fresh)
        for name, path in built.items():
            nixoslab.copy_to_host(self._host_root(name), path)
            self.exec(name, nixoslab.switch_script(path), check=True)

    def _write_inventory(self, specs: Sequence[HostSpec]) -> None:
        pairs = [
            (s, files.public_key_of(files.host_path(self._host_root(s.name), files.HOST_KEY_PATH)))
            for s in specs
        ]
        text = files.render_inventory(pairs, self.admin_key, self.flake_dir, layout.nix_system())
        files.atomic_write(self.inventory_path, text)
        files.atomic_write(self.known_hosts_path, files.render_known_hosts(pairs))
