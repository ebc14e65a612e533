"""Opening one SSH connection: pinned host keys, our own TCP socket, errors in words.

:func:`open_connection` is what :meth:`infratool.remote.Remote.connect` runs;
it returns an authenticated paramiko ``SSHClient`` or raises
:class:`HostKeyError` / :class:`ConnectError`. Host keys are checked during
the key exchange, before authentication, before any command
(:class:`~infratool.remote.hostkeys.RefuseUnknownKey`).
"""

from __future__ import annotations

import base64
import socket
import sys
import time
from types import ModuleType

from infratool.errors import ConnectError, HostKeyError
from infratool.inventory import Host
from infratool.remote.hostkeys import TRANSPORT_LOG, RefuseUnknownKey, pkey_fingerprint


def paramiko_module() -> ModuleType:
    """paramiko, imported without invoke when this process has not loaded invoke yet.

    ``paramiko.config`` imports invoke (a whole task runner, ~90 ms of CPU
    on the lab machine) only to run ``Match exec`` lines of an ssh_config,
    which infratool never reads: commands go over raw channels of paramiko's
    transport, connections are opened here. invoke is hidden for the length
    of that one import (paramiko records it as unavailable) and visible
    again right after, so nothing else in the process loses it.
    """
    if "paramiko" not in sys.modules and "invoke" not in sys.modules:
        sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
        try:
            import paramiko
        finally:
            del sys.modules["invoke"]
    import paramiko

    return paramiko


def open_connection(host: Host, timeout: float):
    """An open, authenticated paramiko ``SSHClient`` to ``host`` (``timeout`` bounds each step)."""
    paramiko = paramiko_module()

    if not host.host_keys:
        raise HostKeyError(
            host.name,
            "no pinned host key: add 'host_key:' to the inventory or an entry to its "
            "known_hosts file (see `infratool host add`)",
        )
    connect_kwargs: dict = {
        "username": host.user,
        "look_for_keys": False,
        "allow_agent": False,
        "timeout": timeout,
        "banner_timeout": timeout,
        "auth_timeout": timeout,
    }
    if host.ssh_key:
        connect_kwargs["key_filename"] = [str(host.ssh_key)]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(RefuseUnknownKey(host))
    client.set_log_channel(TRANSPORT_LOG)
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
        sock = open_socket(host.address, host.port, timeout)
        try:
            client.connect(host.address, port=host.port, sock=sock, **connect_kwargs)
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
            f"Expected {pkey_fingerprint(exc.expected_key)}, offered "
            f"{pkey_fingerprint(exc.key)}. If the host was reinstalled, re-pin it "
            "(`infratool host add`) after checking the new key out of band.",
        ) from None
    except paramiko.AuthenticationException as exc:
        raise ConnectError(host.name, f"authentication as {host.user!r} refused: {exc}") from None
    except TimeoutError:
        raise ConnectError(host.name, f"timed out connecting to {host.address}:{host.port}") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise ConnectError(host.name, connect_failure(host, exc, started, timeout)) from None
    transport = client.get_transport()
    if transport is not None:
        # Detect a dead peer instead of hanging on it for the TCP timeout.
        transport.set_keepalive(15)
    return client


def connect_failure(host: Host, exc: BaseException, started: float, timeout: float) -> str:
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


def open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``address:port`` with Nagle's algorithm off."""
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
