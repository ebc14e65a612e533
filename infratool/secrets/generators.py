"""Secret generators, by name: each makes a fresh :class:`Secret` (and its public part).

==============  =====================================================  ==========================
name            params (defaults)                                      value / public
==============  =====================================================  ==========================
password        length (32, 8..4096), alphabet (alnum | alnum+symbols   random password / none
                | lower+digits)
hex             bytes (32, 8..1024)                                    hex of random bytes / none
base64          bytes (32, 8..1024), urlsafe (false)                   base64 of random bytes
ssh-ed25519     comment ("")                                           OpenSSH private key text /
                                                                       ``ssh-ed25519 AAAA... c``
age             (none)                                                 ``AGE-SECRET-KEY-1...`` /
                                                                       ``age1...``
nix-cache-key   name (required: ``[A-Za-z0-9._-]+``)                  ``name:base64(seed+pub)``
                                                                       / ``name:base64(pub)``
wireguard       (none)                                                 base64 X25519 private key
                                                                       / its public key (``wg``)
command         run (required), timeout (30), env ([])                 a local command's stdout
                                                                       (:mod:`.command`)
derive          function (required), user, hash, cost (12), template   computed from the
                                                                       ``from:`` secrets
                                                                       (:mod:`.derive`)
prompt          min_length (1)                                         typed by a person:
                                                                       ``secrets set NAME``
vault           path (required), field (password), template, addr,     a dynamic secret and its
                ca_cert, timeout (30)                                  lease (:mod:`.vault`)
==============  =====================================================  ==========================

The last four are *sources*: they take more than params, through a
:class:`GenContext` (the secret's name, its previous value, the new values of
its dependencies, a value a person typed). Each generator says what it needs
(:attr:`Generator.needs_person`, :attr:`Generator.derived`) and how to retire
a value it made (:attr:`Generator.retire`: Vault revokes the old lease), so the
rotation engine asks the registry, never a generator's name.

All randomness comes from the OS CSPRNG (``secrets``, ``cryptography``, pyrage).
Parameters are validated before anything is generated; a bad one raises
:class:`InputError` (without file/line: the policy loader adds them).

The ``alnum+symbols`` alphabet adds only ``- _ . ~`` (URL-unreserved
characters): they need no quoting in shell words, SQL string literals, URLs,
YAML, systemd units or ``.env`` files, so a rotated password can never break
the command or config that carries it. Passwords from the multi-class
alphabets contain at least one character of each class (drawn again until
they do, which keeps the draw uniform over the valid passwords).
"""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from infratool.errors import InputError, SecretsError
from infratool.secrets import agekeys, command, derive, vault

# The key formats live in .keyformats; they stay importable from here, where
# tasks and tests have always found them (generators.public_from_private, ...).
from infratool.secrets.keyformats import (
    nix_cache_key,
    nix_public_key,
    openssh_private_key,
    public_from_private,
    wireguard_public_key,
)
from infratool.secrets.keyformats import parse_nix_cache_key as parse_nix_cache_key
from infratool.secrets.keyformats import parse_openssh_private_key as parse_openssh_private_key
from infratool.secrets.keyformats import ssh_public_line as ssh_public_line
from infratool.secrets.secret import Secret


class ParamError(InputError):
    """A bad generator parameter; ``param`` names it (``None``: a missing/unknown one)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


@dataclass(frozen=True)
class Lease:
    """A secret store's lease on a generated value (Vault): its id and duration in seconds."""

    id: Secret
    ttl: int


@dataclass(frozen=True)
class Generated:
    """A freshly generated value and, for key pairs, its public part (safe to print)."""

    value: Secret
    public: str | None = None
    lease: Lease | None = None


@dataclass(frozen=True)
class GenContext:
    """What a source may need beyond its params (plain generators ignore it)."""

    name: str = ""
    previous: Secret | None = None
    """The secret's current value (``None`` on a first generation)."""
    deps: Mapping[str, Secret] = field(default_factory=dict)
    """The ``from:`` secrets' values, new ones where they rotate in the same run."""
    dep_publics: Mapping[str, str | None] = field(default_factory=dict)
    order: tuple[str, ...] = ()
    """The ``from:`` names in policy order."""
    provided: Secret | None = None
    """A value a person gave (``secrets set``), for ``prompt``."""
    cwd: Path | None = None


class NeedsPerson(SecretsError):
    """A ``prompt`` secret cannot be generated: someone has to run ``secrets set``."""


@dataclass(frozen=True)
class Param:
    """One generator parameter: its type, default, and a check returning an error or ``None``."""

    name: str
    kind: type
    default: Any = None
    required: bool = False
    check: Callable[[Any], str | None] | None = None
    doc: str = ""


@dataclass(frozen=True)
class Generator:
    """A named way to make a secret; see the module docstring for the catalogue."""

    name: str
    doc: str
    make: Callable[[dict[str, Any], GenContext], Generated]
    params: tuple[Param, ...] = ()
    public: Callable[[Secret], str] | None = field(default=None)
    needs_person: bool = False
    """Values come from a person (``secrets set``); a timer cannot rotate them."""
    derived: bool = False
    """Values are computed from the secrets named in the policy's ``from:``."""
    retire: Callable[[dict[str, Any], Lease], None] | None = None
    """Called with the previous value's lease once a new value is promoted."""

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check ``params`` and return them with defaults filled in; :class:`ParamError` if bad."""
        params = dict(params or {})
        known = {p.name: p for p in self.params}
        for name in params:
            if name not in known:
                allowed = ", ".join(known) or "none"
                raise ParamError(
                    f"generator {self.name!r} has no parameter {name!r} (parameters: {allowed})",
                    name,
                )
        result: dict[str, Any] = {}
        for p in self.params:
            if p.name not in params:
                if p.required:
                    raise ParamError(f"generator {self.name!r} needs parameter {p.name!r}")
                result[p.name] = p.default
                continue
            value = params[p.name]
            if value is None and p.default is None and not p.required:
                result[p.name] = None  # an optional parameter left unset (as validate() fills it)
                continue
            # bool is an int in Python; a length of `true` is a mistake, not 1.
            if not isinstance(value, p.kind) or (p.kind is int and isinstance(value, bool)):
                raise ParamError(
                    f"generator {self.name!r}: {p.name} must be {p.kind.__name__}, "
                    f"got {type(value).__name__}",
                    p.name,
                )
            problem = p.check(value) if p.check else None
            if problem:
                raise ParamError(f"generator {self.name!r}: {p.name} {problem}", p.name)
            result[p.name] = value
        return result

    def generate(self, params: Mapping[str, Any] | None = None, ctx: GenContext | None = None) -> Generated:
        """Validate ``params`` and make a new value."""
        return self.make(self.validate(params), ctx or GenContext())


def _between(lo: int, hi: int) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"


# --- password, hex, base64 ---------------------------------------------------------

_SYMBOLS = "-_.~"
ALPHABETS: dict[str, tuple[str, ...]] = {
    "alnum": (string.ascii_lowercase, string.ascii_uppercase, string.digits),
    "alnum+symbols": (string.ascii_lowercase, string.ascii_uppercase, string.digits, _SYMBOLS),
    "lower+digits": (string.ascii_lowercase, string.digits),
}


def _password(p: dict[str, Any], _ctx: GenContext | None = None) -> Generated:
    classes = ALPHABETS[p["alphabet"]]
    chars = "".join(classes)
    while True:
        pw = "".join(secrets.choice(chars) for _ in range(p["length"]))
        if all(any(c in cls for c in pw) for cls in classes):
            return Generated(Secret(pw))


def _hex(p: dict[str, Any], _ctx: GenContext | None = None) -> Generated:
    return Generated(Secret(secrets.token_hex(p["bytes"])))


def _base64(p: dict[str, Any], _ctx: GenContext | None = None) -> Generated:
    raw = secrets.token_bytes(p["bytes"])
    enc = base64.urlsafe_b64encode(raw) if p["urlsafe"] else base64.b64encode(raw)
    return Generated(Secret(enc.decode()))


# --- ssh-ed25519 (the format: :mod:`.keyformats`) --------------------


def _comment_ok(v: str) -> str | None:
    return "must be one line" if "\n" in v or "\r" in v else None


def _ssh(p: dict[str, Any], _ctx: GenContext | None = None) -> Generated:
    seed = secrets.token_bytes(32)
    private = Secret(openssh_private_key(seed, p["comment"]))
    return Generated(private, public_from_private(private))


# --- age -----------------------------------------------------------------------------


def _age(p: dict[str, Any], _ctx: GenContext | None = None) -> Generated:
    import pyrage  # lazily: a compiled extension that start-up should not load

    identity = pyrage.x25519.Identity.generate()
    return Generated(Secret(str(identity)), str(identity.to_public()))


# --- nix-cache-key ------------------------------------------------------------


def _nix_name_ok(v: str) -> str | None:
    ok = v and all(c.isascii() and (c.isalnum() or c in "._-") for c in v)
    return None if ok else f"must be non-empty and use only A-Z a-z 0-9 . _ - (got {v!r})"


def _nix(p: dict[str, Any], _ctx: GenContext | None = None) -> Generated:
    value = Secret(nix_cache_key(p["name"], secrets.token_bytes(32)))
    return Generated(value, nix_public_key(value))


# --- wireguard ------------------------------------------------------------


def _wireguard(_p: dict[str, Any], _ctx: GenContext | None = None) -> Generated:
    key = bytearray(
        x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    )
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    value = Secret(base64.b64encode(bytes(key)).decode())
    return Generated(value, wireguard_public_key(value))


# --- sources: command, derive, prompt, vault ---------------------------------------------


def _command(p: dict[str, Any], ctx: GenContext) -> Generated:
    return Generated(command.run(p, ctx.name, ctx.previous, ctx.cwd))


def _derive(p: dict[str, Any], ctx: GenContext) -> Generated:
    return Generated(derive.derive(p, ctx.deps, ctx.dep_publics, list(ctx.order)))


def _prompt(p: dict[str, Any], ctx: GenContext) -> Generated:
    if ctx.provided is None:
        raise NeedsPerson(f"{ctx.name} is typed by a person: run `infratool secrets set {ctx.name}`")
    raw = ctx.provided.reveal_bytes()
    if len(raw) < p["min_length"]:
        raise InputError(f"the value for {ctx.name} is shorter than {p['min_length']} bytes")
    return Generated(ctx.provided)


def _vault(p: dict[str, Any], ctx: GenContext) -> Generated:
    issued = vault.read(p, ctx.name)
    return Generated(issued.value, lease=Lease(issued.lease_id, issued.ttl))


def _vault_retire(p: dict[str, Any], lease: Lease) -> None:
    vault.revoke(p, lease.id)


def _vault_path_ok(v: str) -> str | None:
    ok = v.strip("/") and not v.startswith("/") and ".." not in v.split("/") and " " not in v
    return None if ok else f"must be a Vault path like database/creds/app, got {v!r}"


def _http_url_ok(v: str) -> str | None:
    return None if v.startswith(("http://", "https://")) else f"must be http(s)://..., got {v!r}"


# --- registry ------------------------------------------------------------------------

GENERATORS: dict[str, Generator] = {
    g.name: g
    for g in (
        Generator(
            "password",
            "random password",
            _password,
            (
                Param("length", int, 32, check=_between(8, 4096)),
                Param(
                    "alphabet",
                    str,
                    "alnum",
                    check=lambda v: (
                        None if v in ALPHABETS else f"must be one of {', '.join(ALPHABETS)}, got {v!r}"
                    ),
                ),
            ),
        ),
        Generator(
            "hex", "random bytes, hex-encoded", _hex, (Param("bytes", int, 32, check=_between(8, 1024)),)
        ),
        Generator(
            "base64",
            "random bytes, base64-encoded",
            _base64,
            (Param("bytes", int, 32, check=_between(8, 1024)), Param("urlsafe", bool, False)),
        ),
        Generator(
            "ssh-ed25519",
            "OpenSSH Ed25519 key pair",
            _ssh,
            (Param("comment", str, "", check=_comment_ok),),
            public=public_from_private,
        ),
        Generator("age", "age X25519 identity", _age, (), public=agekeys.recipient_of),
        Generator(
            "nix-cache-key",
            "Nix binary-cache signing key",
            _nix,
            (Param("name", str, required=True, check=_nix_name_ok),),
            public=nix_public_key,
        ),
        Generator(
            "wireguard", "WireGuard (Curve25519) key pair", _wireguard, (), public=wireguard_public_key
        ),
        Generator(
            "command",
            "a local command's stdout (pass, vault kv get, op read, bw get)",
            _command,
            (
                Param("run", str, required=True, check=command.check_run),
                Param("timeout", int, 30, check=_between(1, 3600)),
                Param("env", list, [], check=command.check_env),
            ),
        ),
        Generator(
            "derive",
            "computed from other secrets (from:)",
            _derive,
            (
                Param("function", str, required=True, check=derive.check_function),
                Param("user", str, None, check=derive.check_user),
                Param("hash", str, "bcrypt", check=derive.check_hash),
                Param("cost", int, 12, check=_between(4, 31)),
                Param("template", str, None),
            ),
            derived=True,
        ),
        Generator(
            "prompt",
            "typed by a person (secrets set NAME)",
            _prompt,
            (Param("min_length", int, 1, check=_between(1, 4096)),),
            needs_person=True,
        ),
        Generator(
            "vault",
            "a Vault dynamic secret (lease TTL = max age; old lease revoked after promote)",
            _vault,
            (
                Param("path", str, required=True, check=_vault_path_ok),
                Param("field", str, "password"),
                Param("template", str, None),
                Param("addr", str, None, check=_http_url_ok),
                Param("ca_cert", str, None),
                Param("timeout", int, 30, check=_between(1, 600)),
            ),
            retire=_vault_retire,
        ),
    )
}


def get(name: str) -> Generator:
    """The generator called ``name``; :class:`InputError` listing the known ones if none is."""
    try:
        return GENERATORS[name]
    except KeyError:
        raise InputError(f"unknown generator {name!r} (known: {', '.join(GENERATORS)})") from None


def generate(name: str, params: Mapping[str, Any] | None = None, ctx: GenContext | None = None) -> Generated:
    """A fresh value from generator ``name`` with ``params`` (``ctx``: see :class:`GenContext`)."""
    return get(name).generate(params, ctx)


def public_part(name: str, value: Secret) -> str | None:
    """The public part of a value made by generator ``name`` (``None`` for plain secrets)."""
    gen = get(name)
    return gen.public(value) if gen.public else None
