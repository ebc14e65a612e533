"""Rotation state beside the secrets: when each rotation ran, and how it went.

One file for every kind of rotation (secret, cache-key, builder-key, ...),
keyed ``kind/name`` (:func:`key`). Stored as plain YAML in
``<secrets dir>/.rotation-state.yaml`` (see :func:`state_path`) so it is
readable in a code review and diffable in git. It NEVER holds a value: only
names, times, counters, host names and (redacted) messages.

.. code-block:: yaml

    version: 2
    rotations:
      secret/postgres/app:
        last_rotated: "2024-05-01T12:00:00Z"   # ISO 8601, UTC; null = never
        generation: 3                          # +1 on every promoted rotation
        status: ok                             # ok | pending | failed
        phase: null                            # the engine's phase while pending
        last_result: rotated                   # short outcome word/phrase
        last_error: null                       # redacted message of the last failure
        updated: "2024-05-01T12:00:03Z"        # when this entry last changed
        lease_ttl: null                        # seconds: a Vault lease's duration (caps max_age)
        checks: {}                             # host → null (verified) or problem, this rotation
        extra: {}                              # kind-specific plain facts (key names, ...)

Version 1 files (``secrets:`` keyed by secret name) are read as the
``secret/`` kind; :func:`load_dir` also folds in the binary cache's old
``.binary-cache-state.yaml`` (as ``cache-key/NAME``) until it is rewritten.

Writes are atomic (temp file, fsync, rename), so a crash leaves the previous
state or the new one. Every change is a read-modify-write under the state
file's own ``flock`` (:func:`locked`, on ``.rotation-state.yaml.lock``): the
rotation locks are per *sops file*, so two rotations of secrets in two files
run at once, and without this lock each saves the state it read before the
other's update (issue 13.10: one secret left "pending stored").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.safeopen import atomic_write, open_regular
from infratool.secrets.secret import REDACTOR

STATE_FILE = ".rotation-state.yaml"
VERSION = 2
LEGACY_CACHE_FILE = ".binary-cache-state.yaml"
"""The binary cache's state file before the one engine (read, never written)."""
Status = Literal["ok", "pending", "failed"]
STATUSES: tuple[str, ...] = get_args(Status)


def state_path(secrets_dir: str | Path) -> Path:
    """The state file for the secrets in ``secrets_dir``."""
    return Path(secrets_dir) / STATE_FILE


def key(kind: str, name: str) -> str:
    """The state key of rotation ``name`` of ``kind``: ``secret/postgres/app``."""
    return f"{kind}/{name}"


def split_key(full: str) -> tuple[str, str]:
    """``kind/name`` → (kind, name); a key without a kind is a secret (version 1)."""
    kind, sep, name = full.partition("/")
    return (kind, name) if sep and kind in KNOWN_KINDS else ("secret", full)


KNOWN_KINDS = ("secret", "cache-key", "builder-key", "sops-nix")
"""Kinds the state file knows; :mod:`infratool.rotation.kinds` registers their behaviour."""


def utcnow() -> datetime:
    """Now, timezone-aware UTC, to the second (what the state file stores)."""
    return datetime.now(UTC).replace(microsecond=0)


def format_time(when: datetime | None) -> str | None:
    """``2024-05-01T12:00:00Z`` (UTC) or ``None``."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError("naive datetime: pass an aware (UTC) time")
    return when.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time (``Z`` or offset) into an aware UTC datetime."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("time without a timezone")
    return when.astimezone(UTC)


@dataclass
class SecretState:
    """The rotation record of one secret (never its value)."""

    last_rotated: datetime | None = None
    generation: int = 0
    status: Status = "ok"
    phase: str | None = None
    last_result: str | None = None
    last_error: str | None = None
    updated: datetime | None = None
    lease_ttl: int | None = None
    """Duration (s) of the current value's lease (``generator: vault``); caps the max age."""
    checks: dict[str, str | None] = field(default_factory=dict)
    """The rotation in progress: target → ``None`` (delivered and verified) or its problem."""
    extra: dict[str, str | None] = field(default_factory=dict)
    """Kind-specific plain facts (a cache's current and next key names); never a value."""

    def max_age(self, policy_max_age: timedelta | None) -> timedelta | None:
        """The effective max age: the policy's, or the lease's duration if that is shorter."""
        if self.lease_ttl is None:
            return policy_max_age
        lease = timedelta(seconds=self.lease_ttl)
        return lease if policy_max_age is None else min(policy_max_age, lease)

    def age(self, now: datetime | None = None) -> timedelta | None:
        """Time since the last rotation (``None`` if never rotated)."""
        if self.last_rotated is None:
            return None
        return (now or utcnow()) - self.last_rotated

    def is_due(self, max_age: timedelta | None, now: datetime | None = None) -> bool:
        """Whether a rotation is due: never rotated, or older than ``max_age``.

        With no ``max_age`` only a never-rotated secret is due.
        """
        age = self.age(now)
        if age is None:
            return True
        return max_age is not None and age >= max_age

    def record(
        self,
        status: Status,
        result: str | None = None,
        error: str | None = None,
        *,
        phase: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Update status/result/error (redacting the error) and stamp ``updated``."""
        self.status = status
        self.phase = phase
        self.last_result = result
        self.last_error = REDACTOR.redact(error) if error else None
        self.updated = now or utcnow()

    def promoted(self, now: datetime | None = None, result: str = "rotated") -> None:
        """Mark a successful rotation: new generation, rotated now, status ok."""
        now = now or utcnow()
        self.generation += 1
        self.last_rotated = now
        self.record("ok", result, None, now=now)


@dataclass
class RotationState:
    """Every rotation's :class:`SecretState`, by ``kind/name`` (see :func:`key`)."""

    rotations: dict[str, SecretState] = field(default_factory=dict)

    def get(self, full_key: str) -> SecretState:
        """The state of ``full_key`` (``kind/name``), created (never rotated) if absent."""
        return self.rotations.setdefault(full_key, SecretState())

    def of_kind(self, kind: str) -> dict[str, SecretState]:
        """The records of one kind, by name (without the ``kind/`` prefix)."""
        return {n: r for k, r in self.rotations.items() for kd, n in [split_key(k)] if kd == kind}

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready form (times as ISO strings, errors redacted)."""
        out: dict[str, Any] = {}
        for name in sorted(self.rotations):
            s = self.rotations[name]
            out[name] = {
                "last_rotated": format_time(s.last_rotated),
                "generation": s.generation,
                "status": s.status,
                "phase": s.phase,
                "last_result": s.last_result,
                "last_error": REDACTOR.redact(s.last_error) if s.last_error else None,
                "updated": format_time(s.updated),
            }
            if s.lease_ttl is not None:
                out[name]["lease_ttl"] = s.lease_ttl
            if s.checks:
                out[name]["checks"] = {
                    h: REDACTOR.redact(p) if p else None for h, p in sorted(s.checks.items())
                }
            if s.extra:
                out[name]["extra"] = dict(sorted(s.extra.items()))
        return {"version": VERSION, "rotations": out}


_FIELDS = {f.name for f in fields(SecretState)}


def _entry(name: str, raw: Any, path: Path, secrets: Any) -> SecretState:
    line = yamlsrc.line_of(secrets, name)
    raw = yamlsrc.mapping(raw, f"state of {name!r} must be a mapping", path, line)
    yamlsrc.check_keys(raw, _FIELDS, path, f"in the state of {name!r}", line)
    st = SecretState()
    try:
        for key in ("last_rotated", "updated"):
            value = raw.get(key)
            if isinstance(value, datetime):  # hand-edited, unquoted: YAML made it a datetime
                value = value if value.tzinfo else value.replace(tzinfo=UTC)
                setattr(st, key, value.astimezone(UTC))
            elif value is not None:
                if not isinstance(value, str):
                    raise ValueError(f"{key} must be an ISO 8601 time")
                setattr(st, key, parse_time(value))
        gen = raw.get("generation", 0)
        if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
            raise ValueError("generation must be a non-negative integer")
        st.generation = gen
        status = raw.get("status", "ok")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        st.status = status
        ttl = raw.get("lease_ttl")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
            raise ValueError("lease_ttl must be a positive number of seconds")
        st.lease_ttl = ttl
        for key in ("phase", "last_result", "last_error"):
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            setattr(st, key, value)
        for key in ("checks", "extra"):
            value = raw.get(key) or {}
            if not isinstance(value, dict) or any(
                not isinstance(k, str) or (v is not None and not isinstance(v, str)) for k, v in value.items()
            ):
                raise ValueError(f"{key} must map names to strings or null")
            setattr(st, key, dict(value))
    except ValueError as exc:
        raise InputError(f"bad state of {name!r}: {exc}", file=path, line=line) from None
    return st


def load(path: str | Path) -> RotationState:
    """Read the state file at ``path`` (a missing file is an empty state).

    The engine reads this file at every step, so it is parsed with libyaml
    when it is alias-free; anything wrong is parsed again with
    :mod:`infratool.yamlsrc`, whose errors name the file and line.
    """
    path = Path(path)
    if not path.exists():
        return RotationState()
    fast = _fast_parse(path)
    if fast is not None:
        with contextlib.suppress(InputError):
            return _from_data(fast[0], path)
    return _from_data(yamlsrc.load(path), path)


def _fast_parse(path: Path) -> tuple[Any] | None:
    """``(data,)`` parsed by libyaml, or ``None`` (aliases, bad syntax: leave it to yamlsrc)."""
    try:
        text = path.read_text()
        # An alias could expand to a bomb: yamlsrc refuses those, with the line.
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=_CLoader)):
            return None
        return (yaml.load(text, Loader=_CLoader),)
    except (yaml.YAMLError, OSError, UnicodeDecodeError, ValueError):
        return None


_CLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _from_data(data: Any, path: Path) -> RotationState:
    if data is None:
        return RotationState()
    data = yamlsrc.mapping(data, "rotation state must be a mapping", path, yamlsrc.line_of(data))
    version = data.get("version", 1)
    if version not in (1, VERSION):
        raise InputError(
            f"unsupported rotation state version {version!r}",
            file=path,
            line=yamlsrc.line_of(data, "version"),
        )
    # Version 1 held only secrets, by name; version 2 every kind, by kind/name.
    section = "secrets" if version == 1 else "rotations"
    entries = yamlsrc.mapping(
        data.get(section) or {}, f"'{section}' must be a mapping", path, yamlsrc.line_of(data, section)
    )
    prefix = "secret/" if version == 1 else ""
    return RotationState({prefix + str(n): _entry(n, raw, path, entries) for n, raw in entries.items()})


def load_dir(secrets_dir: str | Path) -> RotationState:
    """The state of every kind in ``secrets_dir``, the old binary-cache file folded in.

    An entry of the one state file wins over the legacy file's: the legacy
    file is only read until the cache-key kind has written its entry here.
    """
    secrets_dir = Path(secrets_dir)
    current = load(state_path(secrets_dir))
    for name, entry in _legacy_caches(secrets_dir / LEGACY_CACHE_FILE).items():
        current.rotations.setdefault(key("cache-key", name), entry)
    return current


def _legacy_caches(path: Path) -> dict[str, SecretState]:
    """``.binary-cache-state.yaml`` (``caches: {NAME: {current, next, phase, created, rotated}}``)."""
    if not path.is_file():
        return {}
    data = yamlsrc.load(path)
    caches = data.get("caches") if isinstance(data, dict) else None
    if not isinstance(caches, dict):
        return {}
    out = {}
    for name, raw in caches.items():
        raw = yamlsrc.mapping(raw, f"cache {name!r} must be a mapping", path, yamlsrc.line_of(caches, name))
        entry = SecretState()
        try:
            created = raw.get("created")
            entry.last_rotated = parse_time(created) if isinstance(created, str) else None
        except ValueError:
            raise InputError(
                f"cache {name!r}: bad time", file=path, line=yamlsrc.line_of(caches, name)
            ) from None
        entry.phase = raw.get("phase") if isinstance(raw.get("phase"), str) else None
        entry.status = "pending" if entry.phase else "ok"
        entry.extra = {k: raw.get(k) for k in ("current", "next") if isinstance(raw.get(k), str)}
        out[str(name)] = entry
    return out


def save(path: str | Path, state: RotationState) -> None:
    """Write ``state`` to ``path`` atomically."""
    text = "# infratool rotation state: no secret values here, only when and how.\n"
    text += yaml.dump(state.to_dict(), Dumper=_CDumper, sort_keys=False, default_flow_style=False)
    atomic_write(Path(path), text.encode(), mode=0o644)


def lock_file(path: str | Path) -> Path:
    """The lock of the state file at ``path``: ``.rotation-state.yaml.lock`` beside it."""
    path = Path(path)
    hidden = path.name if path.name.startswith(".") else f".{path.name}"
    return path.with_name(f"{hidden}.lock")


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[RotationState]:
    """Read-modify-write the state at ``path``: yields the current state, saves it after.

    The ``flock`` on ``.<name>.lock`` beside it is held from the read to the
    rename, and only for that (milliseconds), so waiting for it blocks
    without a timeout; the kernel drops it if the holder is killed. The
    lock file is opened like the rotation locks: no symlinks, regular only.
    If the block raises, nothing is saved.
    """
    lock = lock_file(path)
    fd = open_regular(lock, os.O_RDWR | os.O_CREAT, 0o644, what="state lock file")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        current = load(path)
        yield current
        save(path, current)
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
