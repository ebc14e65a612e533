"""Opening one SSH connection: pinned host keys, our own TCP socket, errors in words.

:func:`open_connection` is what :meth:`infratool.remote.Remote.connect` runs;
it returns an authenticated Fabric ``Connection`` or raises
:class:`HostKeyError` / :class:`ConnectError`. Host keys are checked during
the key exchange, before authentication, before any command
(:class:`~infratool.remote.hostkeys.RefuseUnknownKey`).
"""

from __future__ import annotations

import base64
import socket
import time

from infratool.errors import ConnectError, HostKeyError
from infratool.inventory import Host
from infratool.remote.hostkeys import TRANSPORT_LOG, RefuseUnknownKey, pkey_fingerprint


def open_connection(host: Host, timeout: float):
    """An open, authenticated Fabric ``Connection`` to ``host`` (``timeout`` bounds each step)."""
    import paramiko
    from fabric import Config, Connection

    if not host.host_keys:
        raise HostKeyError(
            host.name,
            "no pinned host key: add 'host_key:' to the inventory or an entry to its "
            "known_hosts file (see `infratool host add`)",
        )
    config = Config(overrides={"load_ssh_configs": False, "timeouts": {"connect": timeout}})
    connect_kwargs: dict = {
        "look_for_keys": False,
        "allow_agent": False,
        "banner_timeout": timeout,
        "auth_timeout": timeout,
    }
    if host.ssh_key:
        connect_kwargs["key_filename"] = [str(host.ssh_key)]
    conn = Connection(
        host.address,
        user=host.user,
        port=host.port,
        config=config,
        connect_timeout=timeout,
        connect_kwargs=connect_kwargs,
    )
    client = conn.client
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
    return conn


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
