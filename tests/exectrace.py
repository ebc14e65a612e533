"""Every ``execve`` on both ends of a run, recorded by strace: argv, environment, times.

Sampling ``/proc`` every few milliseconds misses short processes (a ``base64
-d`` lives for a millisecond). strace does not: it stops each traced process at
``execve`` and writes the full argv and environment before the program runs.
Two ways in:

* :func:`traced` prefixes a controller command (``strace -f`` follows every
  child: sops, nix, ssh);
* :class:`HostTrace` attaches to the sshd of lab hosts, so every session shell
  and everything it starts on the host side is recorded too.

Strings are written hex-escaped (``-xx``) so any byte survives; :class:`Trace`
decodes them. ``-ttt`` adds a wall-clock time to each line and ``+++ exited``
lines mark when a process ends, which is what :meth:`Trace.max_concurrent`
uses to count overlapping SSH sessions across hosts.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import wait_for

STRACE_OPTIONS = ("-f", "-q", "-ttt", "-v", "-xx", "-s", "1048576", "-e", "trace=execve", "-e", "signal=none")

# The one place a value may sit in a host process's environment: the lab's (and
# the example policy's) PostgreSQL verify command does ``read -r PGPASSWORD &&
# export PGPASSWORD && psql ...``, as libpq takes a password from nowhere else
# but a file. /proc/<pid>/environ is readable only by the process's owner (root
# here), unlike argv; docs/security.md says so.
HOST_ENV_ALLOWED = ("PGPASSWORD",)
# And on the controller: `secrets recover check` gives sops the backup identity
# in SOPS_AGE_KEY (sops takes an identity from its environment or a file, and a
# file would be plaintext on disk); the process is the operator's own.
CONTROLLER_ENV_ALLOWED = ("SOPS_AGE_KEY",)

_LINE = re.compile(rb"^(\d+)\s+([\d.]+)\s+(.*)$")
_EXECVE = re.compile(rb'^execve\("((?:\\x[0-9a-f]{2})*)", \[(.*?)\], \[(.*)\]\) = 0$')
_STRING = re.compile(rb'"((?:\\x[0-9a-f]{2})*)"')
_HEX = re.compile(rb"\\x([0-9a-f]{2})")


def _unhex(escaped: bytes) -> bytes:
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), escaped)


def strace() -> str:
    """The strace binary (scripts/setup.sh installs it); fails the test if it is missing."""
    found = shutil.which("strace")
    assert found, "strace is not installed (scripts/setup.sh installs it)"
    return found


@dataclass(frozen=True)
class Exec:
    """One successful ``execve``: who, when, and exactly what it ran with."""

    pid: int
    time: float
    path: bytes
    argv: tuple[bytes, ...]
    env: tuple[bytes, ...]

    @property
    def command(self) -> str:
        """argv joined with spaces, for messages."""
        return b" ".join(self.argv).decode(errors="replace")


@dataclass
class Trace:
    """The parsed strace output of one or more trace files."""

    execs: list[Exec]
    exits: dict[int, float]

    @classmethod
    def read(cls, files: Sequence[Path]) -> Trace:
        """Parse strace ``-f -ttt -xx`` output (the exit times of processes included)."""
        execs: list[Exec] = []
        exits: dict[int, float] = {}
        for file in files:
            for raw in file.read_bytes().splitlines():
                m = _LINE.match(raw)
                if not m:
                    continue
                pid, when, rest = int(m.group(1)), float(m.group(2)), m.group(3)
                if rest.startswith(b"+++ exited") or rest.startswith(b"+++ killed"):
                    exits[pid] = when
                    continue
                e = _EXECVE.match(rest)
                if e:
                    argv = tuple(_unhex(s) for s in _STRING.findall(e.group(2)))
                    env = tuple(_unhex(s) for s in _STRING.findall(e.group(3)))
                    execs.append(Exec(pid, when, _unhex(e.group(1)), argv, env))
        return cls(execs, exits)

    def containing(self, value: str | bytes) -> list[Exec]:
        """The execs whose argv or environment contains ``value``."""
        needle = value.encode() if isinstance(value, str) else value
        return [x for x in self.execs if any(needle in a for a in (*x.argv, *x.env))]

    def session_shells(self) -> list[Exec]:
        """The shells sshd started for SSH session commands (``<shell> -c <command>``)."""
        return [x for x in self.execs if len(x.argv) >= 3 and x.argv[1] == b"-c" and x.path.endswith(b"sh")]

    def max_concurrent(self, execs: Sequence[Exec]) -> int:
        """The most of ``execs`` alive at one instant (each from its exec until its process exits)."""
        events = []
        for x in execs:
            end = self.exits.get(x.pid)
            assert end is not None, f"no exit recorded for pid {x.pid} ({x.command[:80]})"
            events += [(x.time, 1), (end, -1)]
        alive = peak = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an exit before a start at a tie
            alive += step
            peak = max(peak, alive)
        return peak


def traced(argv: Sequence[str], out: Path) -> list[str]:
    """``argv`` run under strace, every exec of it and its children written to ``out``.

    strace exits with the traced command's status (and dies of its signal), so
    callers see the same result as without it.
    """
    return [strace(), *STRACE_OPTIONS, "--seccomp-bpf", "-o", str(out), "--", *argv]


class HostTrace:
    """Attach strace to the sshd of every given lab host for the ``with`` block.

    Every connection sshd accepts from then on (and everything its sessions
    run) is traced; on exit the tracers detach and :attr:`trace` is parsed.
    """

    def __init__(self, lab: Any, out_dir: Path, names: Sequence[str] | None = None) -> None:
        self.pids = {
            row.name: row.pid for row in lab.status() if row.running and (names is None or row.name in names)
        }
        assert self.pids, "no running lab host to trace"
        self.out_dir = out_dir
        self.files: list[Path] = []
        self._procs: list[subprocess.Popen[bytes]] = []  # one strace per host
        self.trace = Trace([], {})

    def __enter__(self) -> HostTrace:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.out_dir / f"{name}.strace"
            self.files.append(out)
            self._procs.append(
                subprocess.Popen(
                    [strace(), *STRACE_OPTIONS, "-o", str(out), "-p", str(pid)], stderr=subprocess.PIPE
                )
            )
        for (name, pid), proc in zip(self.pids.items(), self._procs, strict=True):
            wait_for(
                lambda pid=pid, proc=proc: _tracer_of(pid) == proc.pid,
                30,
                f"strace attached to {name}'s sshd",
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGINT)  # detach; the traced sshd goes on
        for proc in self._procs:
            proc.wait(30)
        self.trace = Trace.read(self.files)


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def iter_values(trace: Trace) -> Iterator[bytes]:
    """Every argv element and environment entry in ``trace`` (for a sweep)."""
    for x in trace.execs:
        yield from x.argv
        yield from x.env


@dataclass
class BothEnds:
    """What :func:`both_ends` recorded: the controller's execs and the hosts'."""

    cli: Any
    controller: Trace | None = None
    hosts: Trace | None = None

    def hits(
        self,
        value: str | bytes,
        host_env_allowed: Sequence[str] = HOST_ENV_ALLOWED,
        controller_env_allowed: Sequence[str] = CONTROLLER_ENV_ALLOWED,
    ) -> list[str]:
        """Where ``value`` appeared in an argv or environment, one line per exec (empty: nowhere).

        The ``*_env_allowed`` names are environment variables a command on that
        end may carry the value in (see :data:`HOST_ENV_ALLOWED`); argv is never
        allowed.
        """
        assert self.controller is not None and self.hosts is not None, "read after the with block"
        needle = value.encode() if isinstance(value, str) else value
        return _hits(self.controller, needle, "controller", controller_env_allowed) + _hits(
            self.hosts, needle, "host", host_env_allowed
        )

    def assert_recorded(self, min_sessions: int = 1) -> None:
        """Fail unless both ends recorded something: a sweep over nothing proves nothing."""
        assert self.controller is not None and self.hosts is not None, "read after the with block"
        assert self.controller.execs, "no exec recorded on the controller"
        assert len(self.hosts.session_shells()) >= min_sessions, "too few SSH session shells recorded"


def _hits(trace: Trace, needle: bytes, end: str, env_allowed: Sequence[str]) -> list[str]:
    allowed = tuple(f"{name}=".encode() for name in env_allowed)
    found = []
    for x in trace.execs:
        if any(needle in a for a in x.argv):
            found.append(f"{end} argv: {x.command[:120]}")
        for e in x.env:
            if needle in e and not e.startswith(allowed):
                found.append(
                    f"{end} environment ({e.split(b'=', 1)[0].decode(errors='replace')}): {x.command[:120]}"
                )
    return found


@contextmanager
def both_ends(lab: Any, cli: Any, out_dir: Path) -> Iterator[BothEnds]:
    """Record every exec on both ends while the block runs the CLI through ``.cli`` (a traced ``cli``)."""
    seen = BothEnds(cli.traced(out_dir / "controller"))
    with HostTrace(lab, out_dir / "hosts") as hosts:
        yield seen
    seen.controller = seen.cli.trace()
    seen.hosts = hosts.trace
