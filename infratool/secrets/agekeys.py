"""age keys: from SSH Ed25519 keys (as ssh-to-age / sops-nix do) and from raw X25519 bytes.

sops-nix decrypts on each host with the host's SSH Ed25519 key converted to an
age X25519 key, so the fleet's ``.sops.yaml`` lists recipients computed from
the hosts' ``ssh_host_ed25519_key.pub``. This module does that conversion
byte-for-byte like Mic92's ``ssh-to-age``:

* public:  Ed25519 point (x, y) -> Montgomery u = (1 + y) / (1 - y) mod p,
  32 bytes little-endian, bech32 with hrp ``age``;
* private: ``sha512(seed)[:32]``, bech32 with hrp ``age-secret-key-``, upper
  case. ``ssh-to-age`` does not clamp these bytes (X25519 clamps when it uses
  them), so neither do we by default; ``clamp=True`` gives libsodium's
  ``crypto_sign_ed25519_sk_to_curve25519`` bytes instead. Both strings are the
  same X25519 key and have the same recipient.

bech32 (BIP 173, the original checksum constant, no length limit — age's
flavour) is implemented here in a few lines so that no runtime dependency is
needed; the tests check it against the ``bech32`` package.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from infratool.errors import InputError
from infratool.secrets.secret import Secret

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)

# Curve25519 field prime and the Edwards curve constant d = -121665/121666.
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P


# --- bech32 -----------------------------------------------------------------


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GENERATOR[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise ValueError("invalid padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` as lower-case bech32 with human-readable part ``hrp``."""
    words = _convertbits(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[w] for w in words + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode bech32 ``text`` into ``(hrp, data)``; ``ValueError`` if it is not valid.

    Like age, mixed case is rejected and the hrp is returned in lower case.
    """
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator or too short")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp):
        raise ValueError("invalid character in hrp")
    try:
        words = [_CHARSET.index(c) for c in rest]
    except ValueError:
        raise ValueError("invalid character") from None
    if _polymod([*_hrp_expand(hrp), *words]) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_convertbits(words[:-6], 5, 8, pad=False))


# --- X25519 identities --------------------------------------------------------


def x25519_identity_from_bytes(raw: bytes) -> Secret:
    """The age identity (``AGE-SECRET-KEY-1...``) for 32 raw X25519 secret bytes."""
    if len(raw) != 32:
        raise InputError(f"an X25519 secret key is 32 bytes, got {len(raw)}")
    return Secret(bech32_encode(IDENTITY_HRP, raw).upper())


def identity_bytes(identity: Secret | str) -> bytes:
    """The 32 raw bytes of an age identity; :class:`InputError` if it is not one."""
    text = identity.reveal() if isinstance(identity, Secret) else identity
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    try:
        hrp, raw = bech32_decode(text.strip())
    except ValueError:
        raise InputError("not an age identity (AGE-SECRET-KEY-1...)") from None
    if hrp != IDENTITY_HRP or len(raw) != 32:
        raise InputError("not an age X25519 identity (AGE-SECRET-KEY-1...)")
    return raw


def recipient_of(identity: Secret | str) -> str:
    """The age recipient (``age1...``) of an age identity."""
    raw = identity_bytes(identity)
    public = x25519.X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    return bech32_encode(RECIPIENT_HRP, public)


def parse_recipient(recipient: str) -> bytes:
    """The 32-byte X25519 public key of an ``age1...`` recipient; :class:`InputError` if bad."""
    try:
        hrp, raw = bech32_decode(recipient.strip())
    except ValueError:
        raise InputError(f"not an age recipient: {recipient!r}") from None
    if hrp != RECIPIENT_HRP or len(raw) != 32:
        raise InputError(f"not an age X25519 recipient: {recipient!r}")
    return raw


# --- SSH Ed25519 -> age -------------------------------------------------------


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated")
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4 : end], end


def ed25519_public_from_ssh(line: str) -> bytes:
    """The 32-byte Ed25519 key of an ``ssh-ed25519 AAAA... [comment]`` line.

    Also accepts a known_hosts / ssh-keyscan line (``host ssh-ed25519 AAAA...``).
    """
    fields = line.split()
    if "ssh-ed25519" not in fields or fields.index("ssh-ed25519") + 1 >= len(fields):
        raise InputError("not an ssh-ed25519 public key (expected 'ssh-ed25519 AAAA...')")
    b64 = fields[fields.index("ssh-ed25519") + 1]
    try:
        blob = base64.b64decode(b64, validate=True)
        kind, offset = _ssh_string(blob, 0)
        key, offset = _ssh_string(blob, offset)
    except ValueError:  # binascii.Error is a ValueError
        raise InputError("malformed ssh-ed25519 public key (bad base64 blob)") from None
    if kind != b"ssh-ed25519" or len(key) != 32 or offset != len(blob):
        raise InputError("malformed ssh-ed25519 public key (bad key blob)")
    return key


def ed25519_public_to_x25519(public: bytes) -> bytes:
    """Montgomery u-coordinate of an Ed25519 public key (32 bytes little-endian).

    Decodes the point like filippo.io/edwards25519 (``SetBytes``), which
    ssh-to-age uses: y is taken mod p, x must exist on the curve. The identity
    point (y = 1), which would give u = 0, is refused.
    """
    if len(public) != 32:
        raise InputError("an Ed25519 public key is 32 bytes")
    y = (int.from_bytes(public, "little") & ((1 << 255) - 1)) % _P
    # x^2 = (y^2 - 1) / (d*y^2 + 1); the point exists iff that has a square root.
    u2 = (y * y - 1) % _P
    v2 = (_D * y * y + 1) % _P
    x2 = u2 * pow(v2, _P - 2, _P) % _P
    if x2 != 0 and pow(x2, (_P - 1) // 2, _P) != 1:
        raise InputError("not a valid Ed25519 public key (point not on the curve)")
    if y == 1:
        raise InputError("not a usable Ed25519 public key (identity point)")
    u = (1 + y) * pow((1 - y) % _P, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def ssh_ed25519_to_age_recipient(ssh_public_key: str) -> str:
    """The age recipient (``age1...``) of an ``ssh-ed25519 AAAA...`` public key, as ssh-to-age."""
    return bech32_encode(RECIPIENT_HRP, ed25519_public_to_x25519(ed25519_public_from_ssh(ssh_public_key)))


def ssh_ed25519_private_to_age_identity(
    openssh_private: Secret | str | bytes, *, clamp: bool = False
) -> Secret:
    """The age identity of an unencrypted OpenSSH Ed25519 private key, as ``ssh-to-age -private-key``.

    ``sha512(seed)[:32]`` bech32-encoded; with ``clamp=True`` the bytes are
    clamped first (libsodium's form). Error messages never contain key material.
    """
    data = openssh_private.reveal_bytes() if isinstance(openssh_private, Secret) else openssh_private
    if isinstance(data, str):
        data = data.encode()
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:
        raise InputError("the SSH private key is passphrase-protected; decrypt it first") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError("not an OpenSSH private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputError("only ssh-ed25519 private keys can be converted to age identities")
    seed = key.private_bytes_raw()
    raw = bytearray(hashlib.sha512(seed).digest()[:32])
    if clamp:
        raw[0] &= 248
        raw[31] &= 127
        raw[31] |= 64
    return x25519_identity_from_bytes(bytes(raw))
