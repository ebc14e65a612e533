"""SSH to one host: the only module that imports Fabric or paramiko.

One :class:`Remote` per host, opened once and reused for the whole run.

Strict host keys: Fabric's ``Connection`` installs paramiko's auto-add policy and never
loads known_hosts, which would trust any key on first use. Here every
connection gets a policy that refuses unknown keys and only the keys pinned in
the inventory, so a host presenting an unknown or changed key is refused
during the key exchange, before authentication, before any command.

Secrets reach remote processes only through stdin (``in_stream`` with no pty),
never argv or environment variables, which show up in ``ps`` on the host.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from infratool.errors import CommandFailed, ConnectError, HostKeyError, InputError
from infratool.inventory import Host
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


def fingerprint(key_line: str) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of ``"type base64"``."""
    blob = base64.b64decode(key_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _pkey_fingerprint(key) -> str:
    return fingerprint(f"{key.get_name()} {key.get_base64()}")


_SILENT_LOG = "infratool.remote.keyscan"
_TRANSPORT_LOG = "infratool.remote.transport"
# paramiko's transport thread logs every failed handshake (a port that accepts
# and hangs up, a banner that never comes) as a 20-line traceback on stderr.
# connect() maps those failures to a one-line ConnectError, so its transports
# log nowhere either.
for _name in (_SILENT_LOG, _TRANSPORT_LOG):
    logging.getLogger(_name).addHandler(logging.NullHandler())
    logging.getLogger(_name).propagate = False


def offered_host_key(
    address: str, port: int = 22, timeout: float = 10.0, key_type: str = "ssh-ed25519"
) -> str:
    """The host key ``address:port`` offers, as ``"ssh-ed25519 AAAA..."``, trusting nothing.

    For explicit trust on first use (``infratool host add``): only the key
    exchange runs, which proves the server holds the private half of the key
    it offers; no authentication is attempted and no command runs, so the
    result is safe to *show* an operator, who then decides whether to pin it.
    Only ``key_type`` is negotiated (default ssh-ed25519: the key sops-nix
    hosts decrypt with), so a host that has other keys too offers that one.
    """
    import socket

    import paramiko

    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except TimeoutError:
        raise ConnectError(address, f"timed out connecting to {address}:{port}") from None
    except OSError as exc:
        raise ConnectError(address, f"cannot connect to {address}:{port}: {exc.strerror or exc}") from None
    transport = paramiko.Transport(sock)
    # paramiko logs a refused negotiation with a traceback; the error raised
    # below says it in one line, so this probe's transport logs nowhere.
    transport.set_log_channel(_SILENT_LOG)
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        try:
            transport.get_security_options().key_types = (key_type,)
        except ValueError:
            raise InputError(f"unsupported host key type {key_type!r}") from None
        try:
            transport.start_client(timeout=timeout)
        except paramiko.SSHException as exc:
            if "host key" in str(exc).lower():
                raise ConnectError(address, f"{address}:{port} offers no {key_type} host key") from None
            raise ConnectError(address, f"SSH handshake with {address}:{port} failed: {exc}") from None
        except (OSError, EOFError) as exc:
            raise ConnectError(address, f"SSH handshake with {address}:{port} failed: {exc}") from None
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    finally:
        transport.close()
        sock.close()


def _connect_failure(host: Host, exc: BaseException, started: float, timeout: float) -> str:
    """A one-line reason for a failed SSH handshake, in words an operator can act on.

    paramiko reports a handshake that ran out of time from whichever thread
    noticed first: "Error reading SSH protocol banner", "Negotiation timed
    out", or — when its transport thread died while the caller was already
    authenticating — "No existing session". The elapsed time says which
    one really happened.
    """
    where = f"{host.address}:{host.port}"
    if time.monotonic() - started >= timeout * 0.9:
        return f"timed out after {timeout:g} s waiting for the SSH handshake with {where}"
    if str(exc) in ("No existing session", "") or isinstance(exc, EOFError):
        return f"SSH handshake with {where} failed: the peer closed the connection"
    return f"cannot connect to {where}: {exc}"


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

    def connect(self) -> None:
        """Open the connection now (idempotent); raises HostKeyError / ConnectError."""
        if self._conn is not None:
            return
        import paramiko
        from fabric import Config, Connection

        host = self.host
        if not host.host_keys:
            raise HostKeyError(
                host.name,
                "no pinned host key: add 'host_key:' to the inventory or an entry to its "
                "known_hosts file (see `infratool host add`)",
            )
        config = Config(overrides={"load_ssh_configs": False, "timeouts": {"connect": self.connect_timeout}})
        connect_kwargs: dict = {
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
        }
        if host.ssh_key:
            connect_kwargs["key_filename"] = [str(host.ssh_key)]
        conn = Connection(
            host.address,
            user=host.user,
            port=host.port,
            config=config,
            connect_timeout=self.connect_timeout,
            connect_kwargs=connect_kwargs,
        )
        client = conn.client
        client.set_missing_host_key_policy(_RefuseUnknownKey(host))
        client.set_log_channel(_TRANSPORT_LOG)
        keys = client.get_host_keys()
        key_name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        for line in host.host_keys:
            ktype, b64 = line.split()[:2]
            try:
                pkey = paramiko.PKey.from_type_string(ktype, base64.b64decode(b64))
            except Exception as exc:
                raise HostKeyError(host.name, f"pinned host key is unreadable ({ktype}): {exc}") from None
            keys.add(key_name, ktype, pkey)
        try:
            # Our own socket, so TCP_NODELAY is set before the handshake:
            # an SSH request is several small packets, and with Nagle on,
            # each waits for the peer's delayed ACK (40 ms on Linux) — per
            # command and per handshake step (measured: a no-op command took
            # 48 ms with Nagle, 3 ms without; see docs/performance.md).
            started = time.monotonic()
            sock = _open_socket(host.address, host.port, self.connect_timeout)
            conn.connect_kwargs["sock"] = sock
            try:
                conn.open()
            except BaseException:
                # A refused or failed handshake leaves neither the socket nor
                # paramiko's transport thread behind.
                client.close()
                sock.close()
                raise
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                host.name,
                "HOST KEY CHANGED — refusing to connect (possible man-in-the-middle). "
                f"Expected {_pkey_fingerprint(exc.expected_key)}, offered "
                f"{_pkey_fingerprint(exc.key)}. If the host was reinstalled, re-pin it "
                "(`infratool host add`) after checking the new key out of band.",
            ) from None
        except paramiko.AuthenticationException as exc:
            raise ConnectError(host.name, f"authentication as {host.user!r} refused: {exc}") from None
        except TimeoutError:
            raise ConnectError(host.name, f"timed out connecting to {host.address}:{host.port}") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectError(
                host.name, _connect_failure(host, exc, started, self.connect_timeout)
            ) from None
        transport = client.get_transport()
        if transport is not None:
            # Detect a dead peer instead of hanging on it for the TCP timeout.
            transport.set_keepalive(15)
        self._conn = conn

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
        stdin: bytes | str | Secret | None = None,
        check: bool = True,
        timeout: float | None = None,
        what: str | None = None,
    ) -> Result:
        """Run ``command`` through the remote shell; ``stdin`` is fed with no pty.

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
            exited, out, err = self._exec(wire, stdin, None if limit is None else limit + _REPORT_GRACE)
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
        if limit is not None and exited == _TIMED_OUT and time.monotonic() - started >= limit:
            raise CommandFailed(self.host.name, name, exited, f"timed out after {limit:g} s")
        if exited == -1 and not err:
            err = "killed by a signal (no exit status)"
        result = Result(exited, REDACTOR.redact(out), REDACTOR.redact(err))
        _log_command(self.host.name, name, command, result, time.monotonic() - started)
        if check and not result.ok:
            raise CommandFailed(self.host.name, name, result.exited, result.stderr)
        return result

    def _exec(self, command: str, stdin: bytes | None, timeout: float | None) -> tuple[int | None, str, str]:
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
                    if stdin:
                        chan.sendall(stdin)
                    chan.shutdown_write()
                except Exception:
                    # The command exited or closed stdin without reading all of
                    # it (like EPIPE in a pipeline): its exit status tells; a
                    # dead connection shows there too.
                    pass
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
                chan.settimeout(_left(deadline))
                chunk = chan.recv(_CHUNK)
                if not chunk:
                    break
                out += chunk
            helper.join(_left(deadline))
            if helper.is_alive():
                raise TimeoutError
            if problems:
                raise problems[0]
            # recv_exit_status() would wait forever on a host that closed its
            # output but keeps running.
            if not chan.status_event.wait(_left(deadline)):
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
        content: bytes | str | Secret,
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
                chan.settimeout(_left(deadline))
                raw = lines.readline()
                if not raw:
                    chan.status_event.wait(_left(deadline))
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

    def put_files(self, writes: Sequence[FileWrite]) -> None:
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

        Contents travel raw on stdin, each followed by a newline the script
        must read before the rename, so a stream cut short never replaces a
        file. Stops at the first failure: raises :class:`PartialWrite`, whose
        ``written`` files are in place and the rest untouched.
        """
        if not writes:
            return
        payload = bytearray()
        for w in writes:
            data = w.content.reveal_bytes() if isinstance(w.content, Secret) else w.content
            payload += (data.encode() if isinstance(data, str) else data) + b"\n"
        res = self.run(put_files_script(writes, payload_sizes(writes)), stdin=bytes(payload), check=False)
        written = res.stdout.count("ok\n")
        if not res.ok:
            failed = writes[min(written, len(writes) - 1)].path
            raise PartialWrite(self.host.name, f"write {failed}", res.exited, res.stderr, written)


_CHUNK = 65536
_TIMED_OUT = 124
"""GNU timeout's exit status when the deadline passed."""
_KILL_AFTER = 5
"""Seconds a timed-out command gets to exit on SIGTERM before SIGKILL."""
_REPORT_GRACE = 3.0
"""How much longer the controller waits than the host's own deadline."""


def with_deadline(command: str, seconds: float) -> str:
    """``command`` wrapped so the host itself kills it after ``seconds``.

    Closing the SSH channel does not stop a command that has no pty (it
    only loses its pipes), and sshd refuses "signal" requests for root
    sessions, so a timed-out command would otherwise go on running — and
    finish its change — after the run reported it failed. GNU ``timeout``
    puts the command in its own process group and signals the whole group
    (TERM, then KILL after a grace period). The command still runs under the
    user's login shell, exactly as sshd would have run it.
    """
    return f'exec timeout -k {_KILL_AFTER} {seconds:.3f} "${{SHELL:-/bin/sh}}" -c {shlex.quote(command)}'


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline), never below a tick."""
    return None if deadline is None else max(0.001, deadline - time.monotonic())


@dataclass(frozen=True)
class FileWrite:
    """One file for :meth:`Remote.put_files`."""

    path: str
    content: bytes | str | Secret = field(repr=False)
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    expect: str | None = None
    """What the plan saw at ``path`` (see :func:`expected_state`); the write is
    refused when the host has something else there now. None: no check."""


def expected_state(
    exists: bool, is_file: bool = True, is_symlink: bool = False, sha256: str | None = None
) -> str:
    """The token the write script compares with what is at the path now.

    ``A`` absent, ``L`` a symlink, ``O`` another non-regular file, else the
    regular file's sha256; ``-`` (no check) when the plan did not know the hash.
    """
    if not exists:
        return "A"
    if is_symlink:
        return "L"
    if not is_file:
        return "O"
    return sha256 or "-"


class Held:
    """A command left running on the host by :meth:`Remote.hold`."""

    def __init__(self, chan, line: str) -> None:
        self._chan = chan
        self.line = line
        """The line that :meth:`Remote.hold` waited for."""

    def release(self, timeout: float = 10.0) -> None:
        """Close the command's stdin and wait (up to ``timeout``) for it to finish."""
        try:
            self._chan.shutdown_write()
            self._chan.status_event.wait(timeout)
        except Exception:
            pass  # the connection is gone: the host saw its stdin close anyway
        finally:
            self._chan.close()


class PartialWrite(CommandFailed):
    """:meth:`Remote.put_files` stopped at a file; ``written`` files before it are in place."""

    def __init__(self, host: str, what: str, exited: int, stderr: str, written: int) -> None:
        self.written = written
        super().__init__(host, what, exited, stderr)


def payload_sizes(writes: Sequence[FileWrite]) -> list[int]:
    """Byte length of each write's content (as sent)."""
    sizes = []
    for w in writes:
        data = w.content.reveal_bytes() if isinstance(w.content, Secret) else w.content
        sizes.append(len(data.encode() if isinstance(data, str) else data))
    return sizes


_WALK_FUNCTION = r"""err() { echo "infratool: $p: $*" >&2; exit 1; }
walk() {  # cd into the directory of $p; sets n (the file name) and r (the directory)
  n=${p##*/} r= CDPATH=
  case $p in /*) ;; *) err "not an absolute path" ;; esac
  case $n in ''|.|..) err "not a file name" ;; esac
  # From / one name at a time, never through a symlink: after each cd -P,
  # $PWD is the physical path, so a component that is (or was just swapped
  # for) a symlink shows as a mismatch.
  cd -P /
  rest=${p%/*}
  rest=${rest#/}
  while [ -n "$rest" ]; do
    c=${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    case $c in ''|.) continue ;; esac
    r=$r/$c
    [ ! -L "$c" ] || err "refusing to write through a symlink: $r is a symlink"
    [ -d "$c" ] || mkdir -m 755 -- "$c" 2>/dev/null || [ -d "$c" ] || err "cannot create directory $r"
    cd -P -- "$c"
    [ "$PWD" = "${r:-/}" ] || err "refusing to write through a symlink: $r resolves to $PWD"
  done
}
private_dir() {  # make and enter a fresh root-only directory here; sets t
  t=$(mktemp -d -- .infratool.XXXXXXXX)
  cd -P -- "$t"
  f=1
  [ "$PWD" = "$r/$t" ] || err "temp directory $r/$t was swapped"
  case $(stat -c %u:%a .) in 0:700|0:2700) ;; *) err "temp directory $r/$t was swapped" ;; esac
}
cleanup() {
  if [ -n "$f" ]; then rm -f -- f; cd ..; fi
  [ -z "$t" ] || rmdir -- "$t" 2>/dev/null || :
}"""

_PUT_FUNCTION = r"""w() {  # path size mode|- owner|- expect|-
  set -e
  p=$1 t= f=
  walk
  [ ! -d "$n" ] || [ -L "$n" ] || err "is a directory, not a file: nothing written"
  # The temp file lives in a directory of its own that only root can enter,
  # so the directory's owner can rename that directory but never swap a name
  # inside it: every step below works on names only root controls, and the
  # rename into place (relative to the temp directory's parent, which its
  # owner cannot change) replaces the destination without following it.
  trap cleanup EXIT
  private_dir
  umask 077
  head -c "$2" > f
  IFS= read -r end
  [ -z "$end" ] || err "content cut short: nothing written"
  ref=
  if [ "$3" = - ] || [ "$4" = - ]; then
    ref=$(stat -c '%a %u:%g %F' -- "../$n" 2>/dev/null) || ref=
    case $ref in *" regular file"|*" regular empty file") set -- "$@" $ref ;; *) ref= ;; esac
  fi
  if [ "$3" != - ]; then chmod "$3" f
  elif [ -n "$ref" ]; then chmod "$6" f
  else chmod 644 f; fi
  if [ "$4" != - ]; then chown -h -- "$4" f
  elif [ -n "$ref" ] && { [ "$7" != 0:0 ] || [ -g .. ]; }; then chown -h -- "$7" f; fi
  sync -- f 2>/dev/null || :
  if [ "$5" != - ]; then
    if [ -L "../$n" ]; then now=L
    elif [ -f "../$n" ]; then now=$(sha256sum < "../$n"); now=${now%% *}
    elif [ -e "../$n" ]; then now=O
    else now=A; fi
    [ "$now" = "$5" ] || err "changed on the host since the plan read it (stale plan): not written; plan again"
  fi
  mv -T -- f "../$n"
  f=
  cd ..
}"""


_META_FUNCTION = r"""m() {  # path mode|- owner|-
  set -e
  p=$1 t= f=
  walk
  trap cleanup EXIT
  private_dir
  # A second name for the file, in a directory only root controls: whatever
  # is swapped in at the path afterwards, chmod and chown act on this inode.
  # A symlink (ln -P links the link itself) or a file with other hard links
  # (say, a link to /etc/shadow) is refused.
  ln -P -- "../$n" f || err "cannot change mode/owner: not a file"
  [ -f f ] && [ ! -L f ] || err "is not a regular file (a symlink?): mode/owner not changed"
  [ "$(stat -c %h f)" = 2 ] || err "has other hard links: mode/owner not changed"
  [ "$2" = - ] || chmod "$2" f
  [ "$3" = - ] || chown -h -- "$3" f
}"""


def owner_spec(owner: str | None, group: str | None) -> str:
    """``owner:group`` as chown takes it (``-``: keep both)."""
    if not (owner or group):
        return "-"
    return f"{owner or ''}:{group}" if group else owner or ""


def set_meta_script(path: str, mode: int | None, owner: str | None, group: str | None) -> str:
    """The script :meth:`Remote.set_meta` runs."""
    mode_arg = "-" if mode is None else f"{mode:o}"
    call = f"( m {shlex.quote(path)} {mode_arg} {shlex.quote(owner_spec(owner, group))} )"
    return "\n".join([_WALK_FUNCTION, _META_FUNCTION, call])


def put_files_script(writes: Sequence[FileWrite], sizes: Sequence[int]) -> str:
    """The script :meth:`Remote.put_files` runs: one subshell per file, "ok" after each.

    Each write runs in its own subshell so that ``set -e`` and the temp-file
    trap apply to it alone; GNU ``head -c`` never reads past its count, so
    the next file's content stays on stdin.
    """
    lines = [_WALK_FUNCTION, _PUT_FUNCTION]
    for w, size in zip(writes, sizes, strict=True):
        mode = "-" if w.mode is None else f"{w.mode:o}"
        owner = owner_spec(w.owner, w.group)
        # Not `( w ... ) || exit`: inside an || list the shell ignores `set -e`.
        expect = shlex.quote(w.expect or "-")
        lines.append(f"( w {shlex.quote(w.path)} {size} {mode} {shlex.quote(owner)} {expect} ); s=$?")
        lines.append('[ "$s" = 0 ] || exit "$s"; echo ok')
    return "\n".join(lines)


def _open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``address:port`` with Nagle's algorithm off."""
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= 60 else first[:57] + "..."


class _RefuseUnknownKey:
    """paramiko MissingHostKeyPolicy that refuses, naming the offered key.

    Like paramiko's RejectPolicy, but the error carries the fingerprint the
    host offered and the ones we expected, so the operator can compare.
    """

    def __init__(self, host: Host) -> None:
        self.host = host

    def missing_host_key(self, client, hostname, key) -> None:
        expected = ", ".join(fingerprint(k) for k in self.host.host_keys) or "none pinned"
        raise HostKeyError(
            self.host.name,
            f"host key not pinned — refusing to connect. Offered {key.get_name()} "
            f"{_pkey_fingerprint(key)}; expected {expected}.",
        )


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
