"""Host keys: fingerprints, the key a host offers, and the policy that refuses unknown keys.

Fabric's ``Connection`` installs paramiko's auto-add policy and never loads
known_hosts, which would trust any key on first use. Every connection made by
:mod:`infratool.remote.connect` gets :class:`RefuseUnknownKey` instead and
only the keys pinned in the inventory.
"""

from __future__ import annotations

import base64
import hashlib
import logging

from infratool.errors import ConnectError, HostKeyError, InputError
from infratool.inventory import Host


def fingerprint(key_line: str) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of ``"type base64"``."""
    blob = base64.b64decode(key_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def pkey_fingerprint(key) -> str:
    return fingerprint(f"{key.get_name()} {key.get_base64()}")


SILENT_LOG = "infratool.remote.keyscan"
TRANSPORT_LOG = "infratool.remote.transport"
# paramiko's transport thread logs every failed handshake (a port that accepts
# and hangs up, a banner that never comes) as a 20-line traceback on stderr.
# connect() maps those failures to a one-line ConnectError, so its transports
# log nowhere either.
for _name in (SILENT_LOG, TRANSPORT_LOG):
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
    transport.set_log_channel(SILENT_LOG)
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


class RefuseUnknownKey:
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
            f"{pkey_fingerprint(key)}; expected {expected}.",
        )
