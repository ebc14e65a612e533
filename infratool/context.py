"""What a task sees of a host (or of the local flake repo) while planning and applying.

Tasks never open connections: the runner hands them a :class:`HostContext`
wrapping the host's one :class:`~infratool.remote.Remote` and its facts, or
a :class:`LocalContext` for files in the flake repo. Both offer the same small
surface (``read_file``, ``put_file``, ``run``), so a change's ``apply`` reads the
same whether it targets a host or the repo.

During planning, a context also keeps an overlay of files already planned to
change, so two tasks editing one file (say, two ``nix.settings`` entries in
``nix.conf``) each see the other's planned content and the plan stays exact.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infratool.changes import LOCAL
from infratool.errors import CommandFailed, InfratoolError
from infratool.facts import FactCache, FileState
from infratool.inventory import Host
from infratool.localenv import DEPLOY, minimal_env
from infratool.remote import FileWrite, PartialWrite, Remote, Result
from infratool.safeopen import atomic_write
from infratool.secrets.secret import REDACTOR, Secret


@dataclass
class HostContext:
    """A host for tasks: its inventory entry, facts, and its one connection."""

    host: Host
    facts: FactCache
    remote: Remote
    overlay: dict[str, FileState] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The host's inventory name."""
        return self.host.name

    def file(self, path: str) -> FileState:
        """The file at ``path`` as it will be after the changes planned so far."""
        return self.overlay.get(path) or self.facts.file(path)

    def plan_write(
        self,
        path: str,
        content: bytes | None,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        secret: bool = False,
        sha256: str | None = None,
        size: int | None = None,
    ) -> None:
        """Record that a planned change will leave ``path`` with ``content``.

        The mode is what the write gives it: the given one, else the existing
        regular file's, else 0644. ``secret`` content is never shown in a
        later change's diff. Streamed content is not held: ``content`` None
        with its ``sha256`` and ``size``.
        """
        before = self.file(path)
        keep = before.exists and before.is_file
        self.overlay[path] = FileState(
            exists=True,
            is_file=True,
            mode=mode if mode is not None else (before.mode if keep else 0o644),
            owner=owner or (before.owner if keep else None),
            group=group or (before.group if keep else None),
            size=len(content) if content is not None else size,
            sha256=sha256,
            content=content,
            hidden=secret or before.hidden,
        )

    def plan_remove(self, path: str) -> None:
        """Record that a planned change will remove ``path``."""
        self.overlay[path] = FileState(exists=False)

    def run(
        self,
        command: str,
        stdin: bytes | str | Secret | None = None,
        check: bool = True,
        what: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run a command on the host (see :meth:`Remote.run`)."""
        return self.remote.run(command, stdin=stdin, check=check, what=what, timeout=timeout)

    def put_file(
        self,
        path: str,
        content: bytes | str | Secret,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        expect: str | None = None,
    ) -> None:
        """Write a file on the host atomically (``expect``: see :class:`~infratool.remote.FileWrite`)."""
        self.remote.put_file(path, content, mode=mode, owner=owner, group=group, expect=expect)

    def set_meta(
        self, path: str, mode: int | None, owner: str | None = None, group: str | None = None
    ) -> None:
        """Set mode/owner of an existing file without following a symlink (see :meth:`Remote.set_meta`)."""
        self.remote.set_meta(path, mode, owner, group)

    def read_file(self, path: str) -> bytes | None:
        """Current content of a remote file, or None if absent."""
        res = self.remote.run(f"base64 -w0 -- {shlex.quote(path)}", check=False, what=f"read {path}")
        return base64.b64decode(res.stdout) if res.ok else None


class DeferredWriteFailed(Exception):
    """A deferred write failed; ``tag`` is whoever queued it (the runner's change)."""

    def __init__(self, tag: object, cause: InfratoolError) -> None:
        self.tag = tag
        self.cause = cause
        super().__init__(str(cause))


class DeferredWrites:
    """A :class:`HostContext` whose file writes are queued and sent together.

    The runner applies a host's changes through this view so that a
    converge writing N files costs one round trip, not N (and one shell on
    the host, not N). ``put_file`` only queues; any other use of the host
    (``run``, ``read_file``, the raw ``remote``) first sends the queue, so a
    change always finds its earlier writes in place. Reading ``host``,
    ``name``, ``facts`` or planned ``file`` state sends nothing.

    Each queued write carries :attr:`tag` (the change being applied). When a
    send fails, :attr:`failed_tag` tells whose write it was: the writes
    queued before it are in place, the rest were not attempted.
    """

    _PASSIVE = frozenset({"host", "name", "facts", "overlay", "file"})

    def __init__(self, ctx: HostContext) -> None:
        self._ctx = ctx
        self._queue: list[tuple[FileWrite, object]] = []
        self.tag: object = None
        self.failed_tag: object = None

    def put_file(
        self,
        path: str,
        content: bytes | str | Secret,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        expect: str | None = None,
    ) -> None:
        """Queue an atomic write (see :meth:`Remote.put_files`)."""
        self._queue.append((FileWrite(path, content, mode, owner, group, expect), self.tag))

    def flush(self) -> None:
        """Send the queued writes; raises :class:`DeferredWriteFailed`."""
        queue, self._queue = self._queue, []
        if not queue:
            return
        try:
            self._send([w for w, _ in queue])
        except PartialWrite as exc:
            self.failed_tag = queue[min(exc.written, len(queue) - 1)][1]
            raise DeferredWriteFailed(self.failed_tag, exc) from None
        except InfratoolError as exc:  # connection lost: nothing is known to be written
            self.failed_tag = queue[0][1]
            raise DeferredWriteFailed(self.failed_tag, exc) from None

    def _send(self, writes: list[FileWrite]) -> None:
        """One batched write of ``writes`` (a subclass may send them otherwise)."""
        self._ctx.remote.put_files(writes)

    def __getattr__(self, name: str):
        if name not in self._PASSIVE:
            try:
                self.flush()
            except DeferredWriteFailed as exc:
                # The current change's own write failed: it sees the error its
                # own put_file would have raised, and may handle it as before.
                if exc.tag is self.tag:
                    raise exc.cause from None
                raise
        return getattr(self._ctx, name)


@dataclass
class LocalContext:
    """The flake repo on the controller, as a target for generated files."""

    root: Path
    overlay: dict[str, bytes | None] = field(default_factory=dict)
    name: str = LOCAL
    reads: dict[str, str] = field(default_factory=dict)
    """Repo files the plan read from disk → SHA-256 of what it read (``absent`` when
    missing): the local part of a saved plan's facts, checked again at apply."""

    def path(self, rel: str | Path) -> Path:
        """Absolute path of ``rel`` inside the repo."""
        return self.root / rel

    def current(self, rel: str | Path) -> bytes | None:
        """Content of ``rel`` after the changes planned so far (None if absent)."""
        key = str(rel)
        if key in self.overlay:
            return self.overlay[key]
        p = self.path(rel)
        data = p.read_bytes() if p.is_file() else None
        self.note_read(p, data)
        return data

    def note_read(self, path: str | Path, data: bytes | None) -> None:
        """Record that planning read ``path`` (in the repo) and found ``data``."""
        self.reads.setdefault(self.rel(path), file_hash(data))

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the repo root when inside it (as plan files name it)."""
        p = self.path(path)
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def drifted(self, reads: Mapping[str, str]) -> list[str]:
        """The files of ``reads`` whose content is not what was read then."""
        changed = []
        for rel, digest in reads.items():
            p = self.path(rel)
            if file_hash(p.read_bytes() if p.is_file() else None) != digest:
                changed.append(rel)
        return changed

    def plan_write(self, rel: str | Path, content: bytes | None) -> None:
        """Record a planned write (None = removal)."""
        self.overlay[str(rel)] = content

    def put_file(self, rel: str | Path, content: bytes | str, mode: int = 0o644) -> None:
        """Write a repo file atomically (temp in the same directory, fsync, rename)."""
        data = content.encode() if isinstance(content, str) else content
        write_atomic(self.path(rel), data, mode)

    def remove_file(self, rel: str | Path) -> None:
        """Remove a repo file if present."""
        self.path(rel).unlink(missing_ok=True)

    def run(
        self,
        argv: list[str],
        stdin: bytes | None = None,
        check: bool = True,
        what: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a local command (argv form: no shell) in the repo, with a minimal environment.

        Deploys need ssh and Nix settings, not the operator's age key or tokens
        (:mod:`infratool.localenv`). ``env`` adds to it (a deploy's ``NIX_SSHOPTS``).
        """
        env = {**minimal_env(DEPLOY), **(env or {})}
        proc = subprocess.run(argv, input=stdin, capture_output=True, cwd=self.root, env=env)
        if check and proc.returncode != 0:
            raise CommandFailed(
                LOCAL, what or argv[0], proc.returncode, REDACTOR.redact(proc.stderr.decode(errors="replace"))
            )
        return proc


def file_hash(data: bytes | None) -> str:
    """SHA-256 of a file's content as plans record it (``absent`` for no file)."""
    return "absent" if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


write_atomic = atomic_write
"""The one atomic-write helper (:func:`infratool.safeopen.atomic_write`), under its old name."""
