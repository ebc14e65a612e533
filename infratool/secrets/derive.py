"""Derived secrets: values computed from other secrets (``generator: derive``).

A small, fixed set of functions, none of which runs anything but Python code
of ours or of a vetted library:

==============  ===========================================================
function        value
==============  ===========================================================
public-key      the public part of a key pair (ssh-ed25519, age, wireguard,
                nix-cache-key): for consumers that take it as a secret file
bcrypt          ``$2b$<cost>$...`` (libxcrypt, nginx, Apache, most web apps)
argon2id        ``$argon2id$v=19$m=...,t=...,p=...$...`` (PHC string)
sha512-crypt    ``$6$salt$...`` (NixOS ``hashedPassword``, /etc/shadow)
htpasswd        ``user:hash`` with ``hash`` bcrypt or sha512-crypt
template        a text with ``{NAME}`` of each dependency (``{value}``: the
                first one), e.g. a connection URL holding a password
==============  ===========================================================

Hashes are salted afresh at every derivation, so a derived hash changes
whenever its source rotates (and is re-derived with it, in the same staged
rotation: see :mod:`infratool.rotation.engine`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from typing import Any

from infratool.errors import SecretsError
from infratool.secrets.secret import Secret

FUNCTIONS = ("public-key", "bcrypt", "argon2id", "sha512-crypt", "htpasswd", "template")
HTPASSWD_HASHES = ("bcrypt", "sha512-crypt")
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_./-]+)\}")
# bcrypt reads at most 72 bytes of a password; longer ones would be cut silently.
BCRYPT_MAX_BYTES = 72
_USER = re.compile(r"[^:\s]+")


def _text(value: Secret) -> str:
    raw = value.reveal()
    return raw.decode() if isinstance(raw, bytes) else raw


def bcrypt_hash(password: Secret, cost: int = 12) -> str:
    """A bcrypt hash (``$2b$``) of ``password``; refuses passwords bcrypt would truncate."""
    import bcrypt  # lazily: a compiled extension that start-up should not load

    raw = _text(password).encode()
    if len(raw) > BCRYPT_MAX_BYTES:
        raise SecretsError(
            f"bcrypt uses only the first {BCRYPT_MAX_BYTES} bytes of a password; use a shorter one"
        )
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=cost)).decode()


def argon2id_hash(password: Secret) -> str:
    """An Argon2id PHC string of ``password`` (argon2-cffi's RFC 9106 low-memory profile)."""
    from argon2 import PasswordHasher

    return PasswordHasher().hash(_text(password))


# --- SHA-512 crypt (Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512") -----------
# Written out because Python's `crypt` module is deprecated and gone in 3.13;
# tests check it against `openssl passwd -6`.

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The byte triples of the final encoding, as the specification lists them.
_SHA512_ORDER = [
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
]  # fmt: skip


def _b64_24(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ITOA64[w & 0x3F])
        w >>= 6
    return "".join(out)


def _repeat(digest: bytes, length: int) -> bytes:
    return (digest * (length // len(digest) + 1))[:length]


def sha512_crypt(password: Secret | str, salt: str | None = None, rounds: int = 5000) -> str:
    """``$6$salt$hash`` of ``password`` (glibc/libxcrypt's SHA-512 crypt); a random salt by default."""
    pw = (_text(password) if isinstance(password, Secret) else password).encode()
    if salt is None:
        salt = "".join(secrets.choice(_ITOA64) for _ in range(16))
    s = salt[:16].encode()
    rounds = max(1000, min(rounds, 999_999_999))
    n = len(pw)
    b = hashlib.sha512(pw + s + pw).digest()
    a = hashlib.sha512(pw + s)
    a.update(_repeat(b, n))
    i = n
    while i > 0:
        a.update(b if i & 1 else pw)
        i >>= 1
    c = a.digest()
    p = _repeat(hashlib.sha512(pw * n).digest(), n)
    ss = _repeat(hashlib.sha512(s * (16 + c[0])).digest(), len(s))
    for r in range(rounds):
        h = hashlib.sha512(p if r & 1 else c)
        if r % 3:
            h.update(ss)
        if r % 7:
            h.update(p)
        h.update(c if r & 1 else p)
        c = h.digest()
    encoded = "".join(_b64_24(c[x], c[y], c[z], 4) for x, y, z in _SHA512_ORDER) + _b64_24(0, 0, c[63], 2)
    spec = "" if rounds == 5000 else f"rounds={rounds}$"
    return f"$6${spec}{salt[:16]}${encoded}"


def render(template: str, values: Mapping[str, Secret], first: str) -> Secret:
    """``template`` with ``{NAME}`` of each value (``{value}``: the one named ``first``)."""

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        key = first if name == "value" else name
        if key not in values:
            raise SecretsError(f"template names {{{name}}}, which is not a dependency")
        return _text(values[key])

    return Secret(PLACEHOLDER.sub(fill, template))


def placeholders(template: str) -> list[str]:
    """The ``{NAME}`` placeholders of a template, in order."""
    return [m.group(1) for m in PLACEHOLDER.finditer(template)]


def derive(
    params: Mapping[str, Any],
    deps: Mapping[str, Secret],
    publics: Mapping[str, str | None],
    order: list[str],
) -> Secret:
    """The derived value: ``params['function']`` over the dependencies' (new) values.

    ``order`` lists the dependency names as the policy's ``from:`` does;
    ``publics`` has each one's public part (``None`` for plain secrets).
    """
    function = params["function"]
    first = order[0]
    if function == "template":
        return render(params["template"], deps, first)
    if function == "public-key":
        public = publics.get(first)
        if public is None:
            raise SecretsError(f"{first} has no public part to derive")
        return Secret(public)
    source = deps[first]
    if function == "bcrypt":
        return Secret(bcrypt_hash(source, params["cost"]))
    if function == "argon2id":
        return Secret(argon2id_hash(source))
    if function == "sha512-crypt":
        return Secret(sha512_crypt(source))
    if function == "htpasswd":
        hashed = bcrypt_hash(source, params["cost"]) if params["hash"] == "bcrypt" else sha512_crypt(source)
        return Secret(f"{params['user']}:{hashed}")
    raise SecretsError(f"unknown derive function {function!r}")  # validated at load: not reached


def check_function(v: str) -> str | None:
    """Param check of ``function``."""
    return None if v in FUNCTIONS else f"must be one of {', '.join(FUNCTIONS)}, got {v!r}"


def check_user(v: str) -> str | None:
    """Param check of an htpasswd ``user`` (no colon, no whitespace)."""
    return None if _USER.fullmatch(v) else f"must be a user name without ':' or whitespace, got {v!r}"


def check_hash(v: str) -> str | None:
    """Param check of an htpasswd ``hash``."""
    return None if v in HTPASSWD_HASHES else f"must be one of {', '.join(HTPASSWD_HASHES)}, got {v!r}"
