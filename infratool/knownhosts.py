"""The inventory's pinned ``known_hosts`` file, read the way OpenSSH reads it (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT").

The same file is handed to ``ssh``/Nix as ``UserKnownHostsFile``, so infratool
must not trust a key there that OpenSSH would not, for the same host:

* The host is looked up by ``addr`` on port 22 and by ``[addr]:port`` on any
  other port: a plain ``10.0.0.3 ssh-ed25519 ...`` line does **not** pin
  ``10.0.0.3`` port 2222.
* Patterns are comma lists with ``*`` and ``?`` wildcards, compared without
  case; a matching ``!pattern`` excludes the host from the line.
* ``|1|salt|hash`` (``HashKnownHosts``) is HMAC-SHA1 of the name, keyed by
  the salt, and is matched as such.
* ``@revoked`` marks a key that must never be accepted for the hosts the
  line matches, even if another line (or ``host_key:``) pins it.
* ``@cert-authority`` lines hold a CA key, not a host key: infratool does
  not verify host certificates, so they pin nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from infratool.errors import InputError

MARKERS = ("@revoked", "@cert-authority")
_HASHED = re.compile(r"\|1\|([^|]+)\|([^|]+)")


@dataclass(frozen=True)
class Entry:
    """One known_hosts line: its marker (``None``, ``@revoked``, ``@cert-authority``), patterns, key."""

    marker: str | None
    patterns: tuple[str, ...]
    key: str
    """``"type base64"``, as pins are compared everywhere else."""
    line: int


def key_problem(keytype: str, data: str) -> str | None:
    """Why ``keytype data`` is not a usable public key, or ``None``.

    As OpenSSH's sshkey_from_blob begins: the base64 must decode, and the
    blob must start with its own type name, the one written before it. A
    malformed pin is bad input (exit 3), not a refused host key (exit 4).
    """
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return f"the {keytype} key is not valid base64"
    if len(blob) < 4:
        return f"the {keytype} key is truncated"
    size = int.from_bytes(blob[:4], "big")
    inner = blob[4 : 4 + size]
    if len(inner) != size or len(blob) <= 4 + size:
        return f"the {keytype} key is truncated"
    if inner != keytype.encode():
        shown = inner.decode("ascii", "replace")[:40]
        return f"the key says it is {shown!r}, not {keytype!r}"
    return None


def lookup_name(address: str, port: int) -> str:
    """The name OpenSSH looks up for ``address:port``: bare on port 22, else ``[address]:port``."""
    return address if port == 22 else f"[{address}]:{port}"


def _decode(text: str, path: Path, lineno: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("hashed host entry is not valid base64", file=path, line=lineno) from None


def parse(text: str, path: Path) -> list[Entry]:
    """Every entry of the known_hosts ``text`` (from ``path``); malformed lines are InputErrors."""
    entries: list[Entry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = None
        if fields[0].startswith("@"):
            if fields[0] not in MARKERS:
                raise InputError(
                    f"unknown marker {fields[0]!r} (OpenSSH knows {', '.join(MARKERS)})",
                    file=path,
                    line=lineno,
                )
            marker, fields = fields[0], fields[1:]
        if len(fields) < 3:
            raise InputError("expected '[@marker] host[,host] keytype base64'", file=path, line=lineno)
        patterns = tuple(p for p in fields[0].split(",") if p)
        for pattern in patterns:
            if pattern.startswith("|"):
                m = _HASHED.fullmatch(pattern)
                if m is None:
                    raise InputError(
                        "hashed host entries must look like |1|salt|hash", file=path, line=lineno
                    )
                _decode(m.group(1), path, lineno)
                _decode(m.group(2), path, lineno)
        entries.append(Entry(marker, patterns, f"{fields[1]} {fields[2]}", lineno))
    return entries


def _glob(pattern: str, name: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, name.lower()) is not None


def _hashed(pattern: str, name: str) -> bool:
    m = _HASHED.fullmatch(pattern)
    if m is None:
        return False
    salt, digest = base64.b64decode(m.group(1)), base64.b64decode(m.group(2))
    mine = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(mine, digest)


def matches(entry: Entry, name: str) -> bool:
    """Whether ``entry`` applies to the lookup ``name`` (OpenSSH's match_hostname)."""
    found = False
    for pattern in entry.patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        hit = _hashed(body, name) if body.startswith("|") else _glob(body, name)
        if hit and negated:
            return False
        found = found or hit
    return found


def keys_for(entries: list[Entry], address: str, port: int) -> tuple[list[str], set[str]]:
    """``(pinned host keys, revoked keys)`` for ``address:port``."""
    name = lookup_name(address, port)
    pinned: list[str] = []
    revoked: set[str] = set()
    for entry in entries:
        if not matches(entry, name):
            continue
        if entry.marker == "@revoked":
            revoked.add(entry.key)
        elif entry.marker is None:
            pinned.append(entry.key)
    return pinned, revoked
