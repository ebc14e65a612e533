"""One SSH connection per host, reused for the whole run: commands, held commands, file writes.

Secrets reach remote processes only through stdin (no pty), never argv or
environment variables, which show up in ``ps`` on the host. Opening the
connection (pinned host keys) is :mod:`infratool.remote.connect`; the
put-files protocol is :mod:`infratool.remote.writes`; the deadline a command
runs under is :mod:`infratool.remote.deadline`; what :meth:`Remote.hold`
returns is :mod:`infratool.remote.held`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from infratool.errors import CommandFailed, ConnectError
from infratool.inventory import Host
from infratool.remote.deadline import REPORT_GRACE, TIMED_OUT, seconds_left, with_deadline
from infratool.remote.held import Held
from infratool.remote.writes import (
    FileWrite,
    PartialWrite,
    Payload,
    StreamedContent,
    payload_sizes,
    put_files_script,
    set_meta_script,
)
from infratool.secrets.secret import REDACTOR, Secret


@dataclass(frozen=True)
class Result:
    """What one remote command returned."""

    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exited == 0


class Remote:
    """A lazily opened, reused SSH connection to one inventory host."""

    def __init__(self, host: Host, connect_timeout: float = 10.0, command_timeout: float | None = None):
        self.host = host
        # `--timeout` bounds the whole exchange with a host: connecting (TCP,
        # banner, key exchange, auth) must not take longer than a command may.
        self.connect_timeout = min(connect_timeout, command_timeout) if command_timeout else connect_timeout
        self.command_timeout = command_timeout
        self._conn = None
        self.commands_run = 0

    # -- connection -------------------------------------------------------

    # -- connection -------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (idempotent); raises HostKeyError / ConnectError."""
        if self._conn is None:
            from infratool.remote.connect import open_connection

            self._conn = open_connection(self.host, self.connect_timeout)

    def close(self) -> None:
        """Close the connection if open."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> Remote:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands ---------------------------------------------------------

    def run(
        self,
        command: str,
        stdin: bytes | str | Secret | Iterable[bytes] | None = None,
        check: bool = True,
        timeout: float | None = None,
        what: str | None = None,
    ) -> Result:
        """Run ``command`` through the remote shell; ``stdin`` is fed with no pty.

        ``stdin`` may be an iterable of byte chunks, sent as they come (so a
        large file is never held whole: see :class:`~infratool.remote.writes.Payload`).

        ``check`` raises :class:`CommandFailed` on a non-zero exit. ``what``
        names the command in errors instead of the command text (so error
        messages stay short and never quote a script). ``timeout`` (else the
        connection's ``command_timeout``) bounds the whole command: it is
        killed on the host when it runs out (see :func:`with_deadline`) and
        always raises :class:`CommandFailed` "timed out", whatever ``check``.
        """
        self.connect()
        if isinstance(stdin, Secret):
            stdin = stdin.reveal()
        if isinstance(stdin, str):
            stdin = stdin.encode()
        self.commands_run += 1
        limit = timeout or self.command_timeout
        wire = command if limit is None else with_deadline(command, limit)
        name = what or _short(command)
        started = time.monotonic()
        try:
            # The controller waits a little longer than the host's own deadline,
            # so a live host reports the timeout itself (and has killed the
            # command); the controller's deadline catches a host that went silent.
            exited, out, err = self._exec(wire, stdin, None if limit is None else limit + REPORT_GRACE)
        except TimeoutError:
            raise CommandFailed(self.host.name, name, 124, f"timed out after {limit:g} s") from None
        except Exception as exc:
            # The transport died under us (socket or paramiko error).
            if isinstance(exc, OSError | EOFError) or type(exc).__module__.startswith("paramiko"):
                self.close()
                raise ConnectError(self.host.name, f"connection lost: {exc}") from None
            raise
        if exited is None:
            self.close()
            raise ConnectError(self.host.name, f"connection lost during {name}")
        if limit is not None and exited == TIMED_OUT and time.monotonic() - started >= limit:
            raise CommandFailed(self.host.name, name, exited, f"timed out after {limit:g} s")
        if exited == -1 and not err:
            err = "killed by a signal (no exit status)"
        result = Result(exited, REDACTOR.redact(out), REDACTOR.redact(err))
        _log_command(self.host.name, name, command, result, time.monotonic() - started)
        if check and not result.ok:
            raise CommandFailed(self.host.name, name, result.exited, result.stderr)
        return result

    def _exec(
        self, command: str, stdin: bytes | Iterable[bytes] | None, timeout: float | None
    ) -> tuple[int | None, str, str]:
        """One exec channel on the shared transport; ``exited`` is None when the connection died.

        invoke's runner (behind ``Connection.run``) feeds ``in_stream`` one
        byte per 10 ms poll, far too slow for file contents, so commands run
        on a raw session channel of Fabric's client instead: stdin is written
        and stderr drained by a helper thread while stdout is read here, so
        neither side can block the other on a full window. ``timeout`` is a
        deadline for the whole exchange (a chatty command cannot extend it);
        it raises TimeoutError.
        """
        transport = self._conn.client.get_transport()
        deadline = None if timeout is None else time.monotonic() + timeout
        chan = transport.open_session(timeout=self.connect_timeout)
        try:
            chan.exec_command(command)
            err_chunks: list[bytes] = []
            problems: list[BaseException] = []

            def feed_and_drain() -> None:
                try:
                    for chunk in [stdin] if isinstance(stdin, bytes) else stdin or ():
                        if chunk:
                            chan.sendall(chunk)
                except Exception:
                    # The command exited or closed stdin without reading all of
                    # it (like EPIPE in a pipeline): its exit status tells; a
                    # dead connection shows there too.
                    pass
                finally:
                    # Always, even when producing stdin failed: a command left
                    # waiting for more input would hang the run.
                    with contextlib.suppress(Exception):
                        chan.shutdown_write()
                # Errors are handed to the reading thread, which raises them:
                # an exception escaping here would only print a traceback.
                try:
                    while chunk := chan.recv_stderr(_CHUNK):
                        err_chunks.append(chunk)
                except BaseException as exc:
                    problems.append(exc)

            helper = threading.Thread(target=feed_and_drain, daemon=True)
            helper.start()
            out = bytearray()
            # paramiko's channel timeout bounds each read, not the sum, so it
            # is set to what is left before every read. The helper's reads use
            # the value set before they started, so they never end early.
            while True:
                chan.settimeout(seconds_left(deadline))
                chunk = chan.recv(_CHUNK)
                if not chunk:
                    break
                out += chunk
            helper.join(seconds_left(deadline))
            if helper.is_alive():
                raise TimeoutError
            if problems:
                raise problems[0]
            # recv_exit_status() would wait forever on a host that closed its
            # output but keeps running.
            if not chan.status_event.wait(seconds_left(deadline)):
                raise TimeoutError
            # paramiko leaves exit_status at -1 when the channel closed without
            # one: the process died of a signal, or the connection did.
            exited: int | None = chan.exit_status
            if exited == -1 and not transport.is_active():
                exited = None
        finally:
            chan.close()
        err = b"".join(err_chunks)
        return exited, bytes(out).decode(errors="replace"), err.decode(errors="replace")

    def put_file(
        self,
        path: str,
        content: bytes | str | Secret | StreamedContent,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        expect: str | None = None,
    ) -> None:
        """Write ``content`` to ``path`` atomically (one :meth:`put_files` write).

        See :meth:`put_files` for how; a failure at any point (a controller
        killed mid-transfer ends the host's stdin early) leaves the original
        untouched and nothing behind.
        """
        try:
            self.put_files([FileWrite(path, content, mode, owner, group, expect)])
        except PartialWrite as exc:
            raise CommandFailed(self.host.name, f"write {path}", exc.exited, exc.stderr) from None

    def hold(self, command: str, until: Callable[[str], bool], timeout: float, what: str) -> Held:
        """Start ``command`` and return once it printed a line ``until`` accepts, leaving it running.

        The command keeps running on its own channel of this connection until
        :meth:`Held.release` closes its stdin (or the connection goes away,
        which closes it too): for holding something on the host for as long
        as this run lives, such as the run lock. Raises
        :class:`CommandFailed` when no such line comes within ``timeout``
        seconds or the command exits first.
        """
        self.connect()
        self.commands_run += 1
        transport = self._conn.client.get_transport()
        chan = None
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            lines = chan.makefile("rb")
            deadline = time.monotonic() + timeout
            while True:
                chan.settimeout(seconds_left(deadline))
                raw = lines.readline()
                if not raw:
                    chan.status_event.wait(seconds_left(deadline))
                    err = (
                        chan.recv_stderr(_CHUNK).decode(errors="replace") if chan.recv_stderr_ready() else ""
                    )
                    raise CommandFailed(self.host.name, what, chan.exit_status, REDACTOR.redact(err))
                line = raw.decode(errors="replace").strip()
                if until(line):
                    return Held(chan, line)
        except TimeoutError:
            if chan is not None:
                chan.close()
            raise CommandFailed(self.host.name, what, 124, f"timed out after {timeout:g} s") from None
        except CommandFailed:
            chan.close()
            raise
        except Exception as exc:
            if chan is not None:
                chan.close()
            if isinstance(exc, OSError | EOFError) or type(exc).__module__.startswith("paramiko"):
                self.close()
                raise ConnectError(self.host.name, f"connection lost: {exc}") from None
            raise

    def set_meta(
        self, path: str, mode: int | None, owner: str | None = None, group: str | None = None
    ) -> None:
        """Set the mode and/or owner of the existing regular file ``path``, safely.

        chmod follows symlinks, so it never acts on ``path`` by name: the file
        gets a second (hard) link inside a root-only directory, checked to be
        a regular file with no other links, and that name is changed.
        """
        self.run(set_meta_script(path, mode, owner, group), what=f"set mode/owner of {path}")

    def put_files(self, writes: Sequence[FileWrite], prefix: str = "") -> None:
        """Write several files in one round trip, each atomically, in order.

        Safe against whoever owns the destination directory (a service user
        owning ``/var/lib/app``), with only sh and coreutils on the host: the
        script walks to the directory without following symlinks (a
        symlinked parent is refused, naming it), refuses a destination that
        is a directory, writes the temp file inside a fresh root-only (0700)
        directory there, gives it its mode and owner (the given ones, else
        the existing regular file's) by names nobody else can swap, fsyncs
        it, and renames it over the destination (``mv -T``: a symlink there
        is replaced, never followed). With ``expect`` set, the write is
        refused when the destination no longer holds what the plan read.

        Contents (bytes, or :class:`StreamedContent` read while sent) travel raw on stdin, each followed by a newline the script
        must read before the rename, so a stream cut short never replaces a
        file. Stops at the first failure: raises :class:`PartialWrite`, whose
        ``written`` files are in place and the rest untouched.

        ``prefix``: shell text run first in the same script (the run lock,
        :func:`infratool.hostlock.put_files_locked`); exiting there writes nothing.
        """
        if not writes:
            return
        payload = Payload(writes)
        what = f"write {writes[0].path}" if len(writes) == 1 else f"write {len(writes)} files"
        script = prefix + put_files_script(writes, payload_sizes(writes))
        res = self.run(script, stdin=payload, check=False, what=what)
        written = res.stdout.count("ok\n")
        if payload.problem is not None and payload.problem[0] == written:
            # A streamed source that is not what the plan hashed was refused
            # by its end line (the script's "cut short" would mislead). Its
            # index is checked: an earlier write may have stopped the script.
            index, reason = payload.problem
            what = f"write {writes[index].path}"
            raise PartialWrite(
                self.host.name, what, res.exited or 1, f"{reason}: not written; plan again", index
            )
        if not res.ok:
            failed = writes[min(written, len(writes) - 1)].path
            raise PartialWrite(self.host.name, f"write {failed}", res.exited, res.stderr, written)


_CHUNK = 65536


def _short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= 60 else first[:57] + "..."


def _log_command(host: str, what: str, command: str, result: Result, seconds: float) -> None:
    """``-vv``: each remote command (masked; stdin, where secrets travel, never); ``-vvv``: its output."""
    from infratool import log

    level = log.verbosity()
    if level < 2:
        return
    fields: dict[str, object] = {
        "host": host,
        "what": what,
        "command": REDACTOR.redact(command),
        "exit": result.exited,
        "seconds": round(seconds, 3),
    }
    if level >= 3:
        fields.update(stdout=result.stdout, stderr=result.stderr)
    log.get_logger("infratool.remote").debug("remote command", **fields)
