"""Facts: remote state read in one round trip per host, cached for the run.

After pyinfra's ``api/facts.py``: a fact is a small object with the shell
snippet that reads some state and a ``parse`` that turns the output into
Python data; :data:`FACTS` is the registry. Tasks *request* facts (a fact name
and an argument, e.g. ``file /etc/nix/nix.conf``) before planning; the runner
folds every request for a host into one script, runs it once, and splits the
output on a per-run random marker. Planning is then pure computation.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import posixpath
import secrets
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Files above this size are compared by hash only; their content is not sent.
MAX_CONTENT = 256 * 1024


@dataclass(frozen=True)
class FactRequest:
    """One fact to gather: a registered fact name and its argument."""

    name: str
    arg: str = ""


@dataclass(frozen=True)
class Fact:
    """How to read one kind of remote state and parse it."""

    name: str
    command: Callable[[str], str]
    parse: Callable[[str, int], Any]
    """``parse(stdout, exit_status)``."""
    volatile: bool = False
    """The value changes between runs by itself (a clock, a lock holder, a command's
    chatter): it is left out of the digest a saved plan is checked against, so
    it never makes a plan stale."""


@dataclass(frozen=True)
class FileState:
    """A remote path as the ``file`` fact sees it."""

    exists: bool
    is_file: bool = False
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    size: int = 0
    sha256: str | None = None
    content: bytes | None = None
    """``None`` when absent, not a regular file, or larger than MAX_CONTENT."""
    is_symlink: bool = False
    """The path is a symlink (never followed: nothing of its target is read)."""
    via_symlink: bool = False
    """The path resolves through a symlinked parent directory (nothing is read)."""
    hidden: bool = False
    """Planned content that is secret (never shown, whatever the mode)."""

    @property
    def world_readable(self) -> bool:
        """Whether any user on the host may read this file (its content may then be shown)."""
        return self.is_file and self.mode is not None and bool(self.mode & 0o004)

    @property
    def text(self) -> str | None:
        """Content as text (``None`` when unknown)."""
        return None if self.content is None else self.content.decode(errors="replace")


def _file_command(path: str, content: bool = True) -> str:
    # Nothing is read through a symlink: a symlink at the path reports "L";
    # a regular file is opened once (fd 3), and before anything is read from
    # that descriptor the fact checks it is the file at the path asked for:
    # `cd -P` into the parent (a builtin: $PWD is then the physical path,
    # which must be the parent asked for, so a symlinked parent reports "R"),
    # the name there is not a symlink now, and it is the very inode fd 3
    # holds (`-ef`). A name swapped for a symlink around the open, or a
    # parent swapped for one, reports "R" instead of another file's content.
    # Builtins rather than `readlink /dev/fd/3`: every fork+exec on the host
    # costs ~1 ms of CPU, which adds up over 64 hosts sharing a few cores
    # (docs/performance.md: one exec per file was 0.1 of the no-op ratio).
    q = shlex.quote(path)
    real = posixpath.normpath(path)
    parent, name = shlex.quote(posixpath.dirname(real)), shlex.quote(posixpath.basename(real))
    if content:
        body = f'if [ "$4" -le {MAX_CONTENT} ]; then echo C; base64 -w0 <&3; else echo H; sha256sum <&3; fi'
    else:
        body = "sha256sum <&3"
    return (
        f"if [ -L {q} ]; then echo L; elif [ -f {q} ]; then {{ "
        f"cd -P -- {parent} || exit 1; "
        f'if [ "$PWD" != {parent} ] || [ -L {name} ] || ! [ {name} -ef /dev/fd/3 ]; then echo R; '
        f"else s=$(stat -L -c '%a %U %G %s' /dev/fd/3) || exit 1; "
        f'echo "F $s"; set -- $s; {body}; fi; }} 3< {q}; '
        f"elif [ -e {q} ]; then echo O; else echo A; fi"
    )


def _file_parse(out: str, status: int) -> FileState:
    lines = out.splitlines()
    if not lines or lines[0] == "A":
        return FileState(exists=False)
    if lines[0] == "O":
        return FileState(exists=True, is_file=False)
    if lines[0] == "L":
        return FileState(exists=True, is_file=False, is_symlink=True)
    if lines[0] == "R":
        return FileState(exists=True, is_file=False, via_symlink=True)
    _, mode, owner, group, size = lines[0].split()
    content: bytes | None = None
    sha: str | None = None
    tag = lines[1] if len(lines) > 1 else ""
    if tag == "C":  # content sent: hash it here instead of running sha256sum there
        content = base64.b64decode(lines[2] if len(lines) > 2 else "")
        sha = hashlib.sha256(content).hexdigest()
    elif tag == "H":  # too large: hash only
        sha = lines[2].split()[0] if len(lines) > 2 else None
    else:  # file_meta: `sha256sum` output only
        sha = tag.split()[0] if tag else None
        content = b"" if int(size) == 0 else None
    return FileState(True, True, int(mode, 8), owner, group, int(size), sha, content)


def _kv_parse(out: str, status: int) -> dict[str, str]:
    result = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key:
            result[key.strip()] = value.strip().strip('"')
    return result


FACTS: dict[str, Fact] = {}


def register(fact: Fact) -> Fact:
    """Add ``fact`` to the registry (tasks may register their own)."""
    FACTS[fact.name] = fact
    return fact


# Base facts use shell builtins reading /proc and /etc where they can: a fork
# per fact is cheap, an exec of a binary is not (see docs/performance.md).
for _fact in (
    Fact(
        "hostname",
        lambda _: 'read -r h < /proc/sys/kernel/hostname && echo "$h"',
        lambda out, st: out.strip(),
    ),
    Fact(
        "os_release",
        lambda _: 'while IFS= read -r l || [ -n "$l" ]; do echo "$l"; done < /etc/os-release',
        _kv_parse,
    ),
    Fact(
        "kernel",
        lambda _: (
            "read -r s < /proc/sys/kernel/ostype && read -r r < /proc/sys/kernel/osrelease "
            '&& echo "$s $r" || uname -sr'
        ),
        lambda out, st: out.strip(),
    ),
    Fact(
        "arch",
        lambda _: 'read -r m < /proc/sys/kernel/arch 2>/dev/null && echo "$m" || uname -m',
        lambda out, st: out.strip(),
    ),
    # The two nix facts start nix (~40-70 ms of CPU each on the host), so they
    # are not base facts: `infratool facts` shows them, tasks request them.
    Fact(
        "nix_version",
        lambda _: "nix-store --version 2>/dev/null | head -n1",
        lambda out, st: out.strip().split()[-1] if out.strip() else None,
    ),
    Fact(
        "nix_store_dir",
        lambda _: "command -v nix-instantiate >/dev/null && nix-instantiate --eval -E builtins.storeDir",
        lambda out, st: out.strip().strip('"') or None,
    ),
    Fact(
        "systemd",
        lambda _: "[ -d /run/systemd/system ] && echo yes || echo no",
        lambda out, st: out.strip() == "yes",
    ),
    Fact(
        "users",
        lambda _: 'while IFS=: read -r u _; do echo "$u"; done < /etc/passwd',
        lambda out, st: out.split(),
    ),
    Fact("file", _file_command, _file_parse),
    # Metadata and hash only: for files holding secrets, whose content must not travel.
    Fact("file_meta", lambda path: _file_command(path, content=False), _file_parse),
    Fact("command", lambda path: f"command -v {shlex.quote(path)}", lambda out, st: out.strip() or None),
    Fact(
        "exists", lambda path: f"[ -e {shlex.quote(path)} ] && echo yes", lambda out, st: out.strip() == "yes"
    ),
    # A guard command (`unless:`) run read-only at plan time; its exit status is the fact.
    # `eval` of the quoted text keeps it one self-contained command: a `#`, an
    # unbalanced `)` or a here-document in it cannot swallow or reshape the
    # rest of the facts script (it is still the login shell that runs it).
    Fact("succeeds", lambda cmd: f"( eval {shlex.quote(cmd)} ) >/dev/null 2>&1", lambda out, st: st == 0),
    # Output of a read-only command: anything from a version string to a clock, so
    # it is volatile; a task that decides on it should request `succeeds` or a file.
    Fact(
        "stdout",
        lambda cmd: f"( eval {shlex.quote(cmd)} ) 2>/dev/null",
        lambda out, st: out if st == 0 else None,
        volatile=True,
    ),
):
    register(_fact)

BASE_FACTS = [FactRequest(n) for n in ("hostname", "os_release", "kernel", "arch", "systemd", "users")]
"""Gathered on every host of every run (cheap: no binary started)."""

DESCRIBE_FACTS = [*BASE_FACTS, FactRequest("nix_version"), FactRequest("nix_store_dir")]
"""What `infratool facts` shows: the base facts plus the ones that start nix."""


def build_script(requests: Iterable[FactRequest]) -> tuple[str, str, list[FactRequest]]:
    """One shell script that gathers every request; returns (script, marker, ordered requests)."""
    ordered = list(dict.fromkeys(requests))
    marker = f"@@infratool-{secrets.token_hex(8)}@@"
    parts = []
    for i, req in enumerate(ordered):
        cmd = FACTS[req.name].command(req.arg)
        # Each fact in a subshell with stdin closed, so one fact can neither
        # exit the script nor eat another's input.
        parts.append(
            f"printf '\\n%s %d\\n' {marker} {i}; ( {cmd} ) </dev/null 2>/dev/null; "
            f"printf '\\n%s %d %d\\n' {marker} {i} $?"
        )
    return "\n".join(parts), marker, ordered


def parse_output(out: str, marker: str, ordered: list[FactRequest]) -> dict[FactRequest, Any]:
    """Split the script's output back into parsed facts.

    The output is ``\nMARK i\n<body>\nMARK i STATUS\n`` per request; a
    request whose end marker is missing (the script died) is left out, so
    asking for it later fails loudly instead of returning a wrong value.
    """
    results: dict[FactRequest, Any] = {}
    bodies: dict[int, str] = {}
    for chunk in out.split(f"\n{marker} ")[1:]:
        head, _, body = chunk.partition("\n")
        fields = head.split()
        if len(fields) == 1:
            bodies[int(fields[0])] = body.removesuffix("\n")
        elif len(fields) == 2:
            idx, status = int(fields[0]), int(fields[1])
            req = ordered[idx]
            results[req] = FACTS[req.name].parse(bodies.pop(idx, ""), status)
    return results


def fact_key(req: FactRequest) -> str:
    """How a fact is named in plans and messages: ``file /etc/nix/nix.conf``, ``users``."""
    return f"{req.name} {req.arg}" if req.arg else req.name


def parse_fact_key(key: str) -> FactRequest:
    """The request :func:`fact_key` names (for re-gathering the facts of a saved plan)."""
    name, _, arg = key.partition(" ")
    return FactRequest(name, arg)


def value_digest(value: Any) -> str:
    """SHA-256 of a fact's value in a canonical form (file content enters as its hash only)."""

    def plain(v: Any) -> Any:
        if isinstance(v, FileState):
            # Content is covered by sha256; `hidden` is a planning mark, not remote state.
            return {
                k: getattr(v, k)
                for k in ("exists", "is_file", "mode", "owner", "group", "size", "sha256", "is_symlink")
            }
        if isinstance(v, bytes):
            return {"sha256": hashlib.sha256(v).hexdigest()}
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (set, frozenset)):
            return sorted(str(plain(x)) for x in v)  # a set's order is not stable across processes
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return v

    text = json.dumps(plain(value), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_of(hashes: dict[str, str]) -> str:
    """One digest of named fact hashes (order-independent); ``""`` when there are none."""
    if not hashes:
        return ""
    text = json.dumps(sorted(hashes.items()))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class FactCache:
    """Facts of one host for this run: gathered once, then looked up."""

    def __init__(self, host_name: str) -> None:
        self.host_name = host_name
        self._values: dict[FactRequest, Any] = {}

    def update(self, values: dict[FactRequest, Any]) -> None:
        """Merge freshly gathered values."""
        self._values.update(values)

    def missing(self, requests: Iterable[FactRequest]) -> list[FactRequest]:
        """Requests not gathered yet."""
        return [r for r in requests if r not in self._values]

    def get(self, name: str, arg: str = "") -> Any:
        """A gathered fact; asking for one nobody requested is a programming error."""
        req = FactRequest(name, arg)
        if req not in self._values:
            raise KeyError(f"fact {name}({arg!r}) was not gathered for {self.host_name}; request it first")
        return self._values[req]

    def file(self, path: str) -> FileState:
        """The ``file`` fact of ``path`` (or its ``file_meta`` when only that was requested)."""
        req = FactRequest("file", path)
        return self._values[req] if req in self._values else self.get("file_meta", path)

    def hashes(self, requests: Iterable[FactRequest]) -> dict[str, str]:
        """``{fact key: value digest}`` of the non-volatile ``requests`` (see :func:`fact_key`).

        What a saved plan records per host and compares at apply: a fact
        that differs by then names itself in the refusal.
        """
        return {
            fact_key(r): value_digest(self._values[r])
            for r in dict.fromkeys(requests)
            if r in self._values and not FACTS[r.name].volatile
        }

    def as_dict(self) -> dict[str, Any]:
        """The base facts, for `infratool facts`."""
        return {
            r.name if not r.arg else f"{r.name}({r.arg})": v
            for r, v in self._values.items()
            if not isinstance(v, FileState)
        }
