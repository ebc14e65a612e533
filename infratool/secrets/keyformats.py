"""Key formats the generators write and read: OpenSSH Ed25519, Nix signing keys, WireGuard.

Pure functions over bytes and text (no randomness except ssh-keygen's check-int,
no I/O): :mod:`.generators` draws the key material and calls these to lay it out;
tasks call the ``parse_*``/``*_public_key`` readers to check a stored key.
Errors are :class:`InputError` and never include key material.
"""

from __future__ import annotations

import base64
import secrets
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from infratool.errors import InputError
from infratool.secrets.secret import Secret

# --- ssh-ed25519 ---------------------------------------------------------------------
# cryptography writes OpenSSH keys without a comment, and the comment is what
# names a key in authorized_keys; so the (simple, unencrypted) openssh-key-v1
# format is written and read here, exactly as ssh-keygen lays it out.

_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_PEM_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_END = "-----END OPENSSH PRIVATE KEY-----"


def _sshstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _ed25519_blob(public: bytes) -> bytes:
    return _sshstr(b"ssh-ed25519") + _sshstr(public)


def openssh_private_key(seed: bytes, comment: str = "") -> str:
    """Unencrypted OpenSSH private key text for an Ed25519 ``seed`` (as ``ssh-keygen -N ''``)."""
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    check = secrets.token_bytes(4)  # ssh-keygen's random check-int, repeated twice
    private = check + check + _ed25519_blob(public) + _sshstr(seed + public) + _sshstr(comment.encode())
    private += bytes(range(1, 1 + (-len(private) % 8)))  # padding 1, 2, 3... to the block size 8
    blob = (
        _OPENSSH_MAGIC
        + _sshstr(b"none")
        + _sshstr(b"none")
        + _sshstr(b"")
        + struct.pack(">I", 1)
        + _sshstr(_ed25519_blob(public))
        + _sshstr(private)
    )
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "\n".join([_PEM_BEGIN, *lines, _PEM_END]) + "\n"


def _read_sshstr(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated")
    (n,) = struct.unpack(">I", blob[offset : offset + 4])
    if offset + 4 + n > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4 : offset + 4 + n], offset + 4 + n


def parse_openssh_private_key(text: Secret | str) -> tuple[bytes, str]:
    """``(seed, comment)`` of an unencrypted OpenSSH Ed25519 private key; :class:`InputError` if not.

    Messages never include key material.
    """
    raw = text.reveal() if isinstance(text, Secret) else text
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    body = raw.strip()
    if not (body.startswith(_PEM_BEGIN) and body.endswith(_PEM_END)):
        raise InputError("not an OpenSSH private key")
    try:
        blob = base64.b64decode("".join(body[len(_PEM_BEGIN) : -len(_PEM_END)].split()))
        if not blob.startswith(_OPENSSH_MAGIC):
            raise ValueError("magic")
        off = len(_OPENSSH_MAGIC)
        cipher, off = _read_sshstr(blob, off)
        _kdf, off = _read_sshstr(blob, off)
        _kdfopts, off = _read_sshstr(blob, off)
        if cipher != b"none":
            raise InputError("the SSH private key is passphrase-protected; decrypt it first")
        (count,) = struct.unpack(">I", blob[off : off + 4])
        off += 4
        if count != 1:
            raise ValueError("count")
        _pub, off = _read_sshstr(blob, off)
        private, off = _read_sshstr(blob, off)
        c1, c2 = private[0:4], private[4:8]
        if c1 != c2:
            raise ValueError("check")
        kind, p = _read_sshstr(private, 8)
        if kind != b"ssh-ed25519":
            raise InputError("not an ssh-ed25519 private key")
        public, p = _read_sshstr(private, p)
        secret, p = _read_sshstr(private, p)
        comment, p = _read_sshstr(private, p)
    except (ValueError, struct.error):
        raise InputError("malformed OpenSSH private key") from None
    seed = secret[:32]
    derived = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    if len(secret) != 64 or secret[32:] != public or derived != public:
        raise InputError("malformed OpenSSH private key (public half does not match)")
    return seed, comment.decode(errors="replace")


def ssh_public_line(public: bytes, comment: str = "") -> str:
    """``ssh-ed25519 AAAA... comment`` for a raw Ed25519 public key."""
    line = "ssh-ed25519 " + base64.b64encode(_ed25519_blob(public)).decode()
    return f"{line} {comment}" if comment else line


def public_from_private(private: Secret | str) -> str:
    """The ``ssh-ed25519 AAAA... comment`` line of an OpenSSH Ed25519 private key."""
    seed, comment = parse_openssh_private_key(private)
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return ssh_public_line(public, comment)


# --- nix-cache-key ---------------------------------------------------------------------
# Nix's format (libstore/crypto.cc): "name:" + base64 of libsodium's 64-byte
# Ed25519 secret key (32-byte seed followed by the 32-byte public key); the
# public key is "name:" + base64 of those last 32 bytes.


def nix_cache_key(name: str, seed: bytes) -> str:
    """The Nix signing key text ``name:base64(seed+public)`` for an Ed25519 ``seed``."""
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return f"{name}:{base64.b64encode(seed + public).decode()}"


def parse_nix_cache_key(secret_key: Secret | str) -> tuple[str, bytes]:
    """``(name, seed)`` of a Nix binary-cache signing key; :class:`InputError` if malformed."""
    raw = secret_key.reveal() if isinstance(secret_key, Secret) else secret_key
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    name, sep, b64 = raw.strip().partition(":")
    try:
        if not sep or not name:
            raise ValueError("no name")
        key = base64.b64decode(b64, validate=True)
    except ValueError:
        raise InputError("not a Nix signing key (expected name:base64)") from None
    if len(key) != 64:
        raise InputError("not a Nix signing key (the secret key is 64 bytes)")
    seed, public = key[:32], key[32:]
    derived = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    if derived != public:
        raise InputError("not a valid Nix signing key (public half does not match the seed)")
    return name, seed


def nix_public_key(secret_key: Secret | str) -> str:
    """The Nix public key ``name:base64(public)`` of a signing key (``nix key convert-secret-to-public``)."""
    name, seed = parse_nix_cache_key(secret_key)
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return f"{name}:{base64.b64encode(public).decode()}"


# --- wireguard ---------------------------------------------------------------------------
# `wg genkey` / `wg pubkey`: base64 of the raw 32-byte Curve25519 keys. The
# private key is clamped as wg genkey does (X25519 clamps anyway, but a clamped
# key reads the same in every tool).


def wireguard_public_key(private: Secret | str) -> str:
    """The WireGuard public key (base64) of a base64 private key; :class:`InputError` if malformed."""
    raw = private.reveal() if isinstance(private, Secret) else private
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except ValueError:
        raise InputError("not a WireGuard private key (expected base64)") from None
    if len(key) != 32:
        raise InputError("not a WireGuard private key (32 bytes)")
    public = x25519.X25519PrivateKey.from_private_bytes(key).public_key()
    return base64.b64encode(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
