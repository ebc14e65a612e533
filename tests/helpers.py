"""Plain helpers shared by the test suites (importable as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOKS = ROOT / "playbooks"


def cli_argv(*args: object) -> list[str]:
    """The command line of ``python -m infratool`` with ``args`` (the venv's Python)."""
    return [sys.executable, "-m", "infratool", *map(str, args)]


def cli_env(workdir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: no colour, TMPDIR ``workdir/"controller-tmp"`` (created), plus ``env``.

    A private TMPDIR lets a test check that nothing secret was left in the
    controller's temp dir.
    """
    controller_tmp = workdir / "controller-tmp"
    controller_tmp.mkdir(exist_ok=True)
    return {**os.environ, "NO_COLOR": "1", "TMPDIR": str(controller_tmp), **(env or {})}


class Cli:
    """Runs the CLI from ``workdir``: ``cli(*args)`` waits for it, ``cli.start(*args)`` does not."""

    def __init__(self, workdir: Path, trace_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.trace_dir = trace_dir
        self._traced = 0

    def traced(self, trace_dir: Path) -> Cli:
        """This CLI runner, with every run under strace (see tests/exectrace.py); read with :meth:`trace`."""
        trace_dir.mkdir(parents=True, exist_ok=True)
        return Cli(self.workdir, trace_dir)

    def trace(self) -> Any:
        """Every exec of every run so far (an ``exectrace.Trace``); only for a :meth:`traced` runner."""
        from exectrace import Trace

        assert self.trace_dir is not None, "not a traced CLI runner"
        return Trace.read(sorted(self.trace_dir.glob("cli-*.strace")))

    def argv(self, *args: object) -> list[str]:
        """The command line of one run: ``python -m infratool *args``, under strace when tracing."""
        if self.trace_dir is None:
            return cli_argv(*args)
        from exectrace import traced

        self._traced += 1
        return traced(cli_argv(*args), self.trace_dir / f"cli-{self._traced}.strace")

    def __call__(
        self, *args: object, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``infratool *args`` to the end; its output captured (text)."""
        return subprocess.run(
            self.argv(*args),
            input=input,
            capture_output=True,
            text=True,
            env=cli_env(self.workdir, env),
            cwd=self.workdir,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def start(self, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``infratool *args`` in the background, stdout/stderr piped (read with communicate())."""
        return subprocess.Popen(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(self.workdir, env),
            cwd=self.workdir,
        )


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc (``T``: stopped); ``""`` once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Wait until ``proc`` has stopped itself (an ``INFRATOOL_FAULT=<point>:stop`` fault point)."""
    wait_for(
        lambda: process_state(proc.pid) == "T" or proc.poll() is not None,
        timeout,
        "the fault point's SIGSTOP",
    )
    assert proc.poll() is None, f"exited ({proc.returncode}) instead of stopping: {proc.communicate()}"


@contextmanager
def sample_ps(interval: float = 0.02) -> Iterator[list[str]]:
    """Collect every process command line seen while the block runs (sampled: it can miss).

    A process that lives less than ``interval`` can be missed; to prove that a
    value is in no argv, use :func:`exectrace.both_ends`, which records every
    exec. Kept for tests that only need to see a long-running process.

    Lab hosts share the controller's pid namespace, so one sampler sees the
    controller's processes and every remote session's at once.
    """
    seen: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if raw:
                    seen.append(raw.replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain ``needle``."""
    hits = []
    data = needle.encode()
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and data in path.read_bytes():
                hits.append(path)
        except OSError:
            continue
    return hits


def nix_parse(path: str | Path) -> None:
    """Assert that ``nix-instantiate --parse`` accepts the Nix file at ``path``."""
    proc = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def nix_eval(expr: str | Path) -> Any:
    """Evaluate a Nix expression (a string) or file (a Path) strictly, to Python data.

    ``NIX_PATH`` is emptied so nothing outside the expression (no nixpkgs) can leak in.
    """
    target = [str(expr)] if isinstance(expr, Path) else ["-E", expr]
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", *target],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "NIX_PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class SshdLogs:
    """A snapshot of every lab host's sshd log, to see what a command did to the hosts since.

    ``LogLevel VERBOSE`` logs every connection, login and session, so an
    unchanged log proves a host was not contacted at all.
    """

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.before = {h.name: h.sshd_log.read_text() for h in lab.hosts()}

    def since(self, name: str) -> str:
        """What host ``name``'s sshd logged after the snapshot."""
        return self.lab.host(name).sshd_log.read_text()[len(self.before[name]) :]

    def contacted(self) -> list[str]:
        """The hosts whose sshd took a new connection since the snapshot (a refused key exchange too).

        Only a new connection counts (sshd's ``Connection from`` line, its first for
        every TCP connection): sshd logs the end of a connection made before the
        snapshot ("Connection closed", "Transferred: ...") when it gets to it, which
        on a loaded machine can be after the command that made it has exited.
        """
        return [name for name in self.before if "\nConnection from " in "\n" + self.since(name)]

    def assert_no_contact(self) -> None:
        """Fail naming the hosts that were contacted since the snapshot."""
        assert self.contacted() == [], {name: self.since(name)[-500:] for name in self.contacted()}


def processes_with(needle: str) -> list[int]:
    """Pids whose command line contains ``needle`` (lab hosts share the controller's pid namespace)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                continue
    return found


def ok(result: subprocess.CompletedProcess[Any]) -> subprocess.CompletedProcess[Any]:
    """``result`` after asserting it exited 0 (showing its output, text or bytes, if not)."""
    out = result.stdout + result.stderr
    assert result.returncode == 0, out.decode(errors="replace") if isinstance(out, bytes) else out
    return result


def digests(directory: Path, keys_only: bool = False) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` (or just sbctl's GUID and keys/)."""
    import hashlib

    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and (not keys_only or p.parts[len(directory.parts)] in ("GUID", "keys"))
    }


def openssh_fingerprint(public_line: str) -> str:
    """The ``SHA256:...`` fingerprint OpenSSH itself gives ``type base64 [comment]`` (as sshd logs it).

    Computed by ``ssh-keygen -lf -``, not by infratool's code, so a test that
    compares against it checks that code against the real thing.
    """
    line = " ".join(public_line.split()[:2]) + "\n"
    r = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], input=line, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[1]


def ssh_to_age(public_line: str) -> str:
    """ssh-to-age's age recipient for an ``ssh-ed25519`` public key, computed without infratool.

    An independent reference for the tests: libsodium (PyNaCl) converts the
    Ed25519 key to X25519, the ``bech32`` package encodes it. Accepts a bare
    ``ssh-ed25519 AAAA...`` line or a known_hosts line with host names first.
    """
    import base64

    import bech32
    import nacl.bindings

    fields = public_line.split()
    blob = base64.b64decode(fields[fields.index("ssh-ed25519") + 1])
    assert blob[:19] == b"\0\0\0\x0bssh-ed25519\0\0\0\x20" and len(blob) == 51, "not an ssh-ed25519 key"
    x25519 = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(blob[19:])
    return bech32.bech32_encode("age", bech32.convertbits(list(x25519), 8, 5))


def systemd_verify(units: dict[str, str], directory: Path) -> subprocess.CompletedProcess[str]:
    """Write ``units`` (name → text) into ``directory`` and run ``systemd-analyze verify`` on them."""
    directory.mkdir()
    for name, text in units.items():
        (directory / name).write_text(text)
    return subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=no", *sorted(map(str, directory.iterdir()))],
        capture_output=True,
        text=True,
    )


def tokend_accepts(lab: Any, token: str, host: str = "slax") -> bool:
    """Does the lab's tokend on ``host`` accept ``token``? (a real HTTP request from that host)."""
    from infratool_lab.services import TOKEND_PORT

    address = lab.host(host).address
    r = lab.exec(
        host,
        f"read -r t; printf 'Authorization: Bearer %s\\n' \"$t\" | "
        f"curl -fsS -o /dev/null -H @- http://{address}:{TOKEND_PORT}/",
        input=token.encode() + b"\n",
    )
    return r.returncode == 0
