"""The cache's signing keys: where they are kept, and which one does what right now.

Secret material lives only in sops (``secrets/binary-cache.yaml``)::

    binary-cache:
      snix-cache:
        secret-key: "snix-cache-1:base64..."        # the current key
        next-secret-key: "snix-cache-2:base64..."   # only while a rotation runs

Beside it, a plaintext state file (``secrets/.binary-cache-state.yaml``) holds
key *names*, times and the rotation phase — never a value — so a rotation cut
short by a crash is resumed by the next run, and reviewers can read it::

    version: 1
    caches:
      snix-cache: {current: snix-cache-1, next: snix-cache-2, phase: resign,
                   created: "2024-05-01T12:00:00Z", rotated: null}

Every task derives what a host should hold from these two (:class:`Keys`):
which key signs, and which public keys clients trust. A public key is always
derived from its secret key, never typed.

Planning never writes: a cache without a key gets one generated at plan time
and a change that stores it in sops (first, before anything uses it), the key
carried in the change's parameters (sealed in a saved plan), so the public key
the plan shows is the one stored. The same key is shared, through the run's
``ctx.state``, with every later task of the run that needs its public half.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from infratool import yamlsrc
from infratool.changes import LOCAL, Change, action
from infratool.context import LocalContext
from infratool.errors import InputError, SecretsError, SecretsFileError
from infratool.rotation.state import format_time, utcnow
from infratool.secrets import generators
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore, atomic_write
from infratool.tasks.base import PlanContext
from infratool.tasks.binary_cache.spec import CacheSpec

SOPS_FILE = "binary-cache.yaml"
"""The sops file (relative to ``<flake>/secrets``) holding every cache's keys."""
STATE_FILE = ".binary-cache-state.yaml"
"""The plaintext rotation state beside it (a dotfile: it is not a sops file)."""
CURRENT = "secret-key"
NEXT = "next-secret-key"

PHASES = ("trust-new", "resign", "drop-old", "retire")
"""Rotation phases, in order; each names the state the fleet is being moved to.

* ``trust-new``: clients trust the current *and* the next key; current signs.
* ``resign``: the next key signs; the whole cache is re-signed with it.
* ``drop-old``: clients trust only the next key.
* ``retire``: the next key becomes the current one in sops; the old one is deleted.
"""
_STATE_KEY = "binary-cache"


@dataclass
class CacheRecord:
    """One cache's plaintext state: key names, times and the rotation phase."""

    current: str | None = None
    next: str | None = None
    phase: str | None = None
    created: str | None = None
    """When the current key was generated (UTC, ISO 8601): the age ``max_age`` checks."""
    rotated: str | None = None
    """When the last rotation finished."""


def state_path(store: SopsStore) -> Path:
    """The state file beside the sops file."""
    return store.repo / STATE_FILE


def read_records(path: Path) -> dict[str, CacheRecord]:
    """Every cache's record; ``{}`` when the file does not exist. Bad content: exit 3 with file:line."""
    if not path.is_file():
        return {}
    data = yamlsrc.load(path)
    caches = data.get("caches") if isinstance(data, dict) else None
    if data is None or caches is None:
        return {}
    if not isinstance(caches, dict):
        raise InputError("'caches' must be a mapping", file=path, line=yamlsrc.line_of(data, "caches"))
    known = {f.name for f in fields(CacheRecord)}
    records = {}
    for name, raw in caches.items():
        line = yamlsrc.line_of(caches, name)
        if not isinstance(raw, dict) or set(raw) - known:
            raise InputError(
                f"cache {name!r}: expected keys {', '.join(sorted(known))}", file=path, line=line
            )
        if any(v is not None and not isinstance(v, str) for v in raw.values()):
            raise InputError(f"cache {name!r}: values must be strings or null", file=path, line=line)
        if raw.get("phase") not in (None, *PHASES):
            raise InputError(
                f"cache {name!r}: phase must be one of {', '.join(PHASES)}", file=path, line=line
            )
        records[str(name)] = CacheRecord(**raw)
    return records


def write_record(path: Path, name: str, record: CacheRecord) -> None:
    """Replace one cache's record (re-reading the file first: other caches' records are kept)."""
    records = read_records(path)
    records[name] = record
    body = yaml.safe_dump(
        {"version": 1, "caches": {k: asdict(v) for k, v in sorted(records.items())}},
        sort_keys=False,
        default_flow_style=False,
    )
    header = (
        "# Binary-cache signing keys: rotation state, written by infratool.\n"
        "# Key names, times and phases only; the keys themselves are in binary-cache.yaml (sops).\n"
    )
    atomic_write(path, (header + body).encode())


def update_record(path: Path, name: str, **changes: Any) -> CacheRecord:
    """Change some fields of one cache's record; returns the new record."""
    record = replace(read_records(path).get(name, CacheRecord()), **changes)
    write_record(path, name, record)
    return record


def key_name(key: Secret) -> str:
    """The name part of a signing key (``snix-cache-2``)."""
    name, _ = generators.parse_nix_cache_key(key)
    return name


def public_key(key: Secret) -> str:
    """``name:base64`` public key derived from the signing key."""
    return generators.nix_public_key(key)


def generation(name: str, base: str) -> int:
    """The generation number of key ``name`` (``snix-cache-3`` → 3; 1 when it has none)."""
    match = re.fullmatch(re.escape(base) + r"-(\d+)", name)
    return int(match.group(1)) if match else 1


@dataclass(frozen=True)
class Keys:
    """The keys of one cache and what the fleet should do with them in the current phase."""

    current: Secret
    next: Secret | None = None
    phase: str | None = None
    record: CacheRecord = field(default_factory=CacheRecord, compare=False)

    @property
    def rotating(self) -> bool:
        """Whether a rotation is in progress."""
        return self.next is not None

    @property
    def signer(self) -> Secret:
        """The key the server signs with: the next key from the re-sign phase on."""
        if self.next is not None and self.phase in ("resign", "drop-old", "retire"):
            return self.next
        return self.current

    @property
    def trusted(self) -> list[str]:
        """Public keys clients trust: both during the overlap, only the new one after it."""
        if self.next is None:
            return [public_key(self.current)]
        if self.phase in ("drop-old", "retire"):
            return [public_key(self.next)]
        return [public_key(self.current), public_key(self.next)]

    def at(self, phase: str | None) -> Keys:
        """These keys as they are in ``phase``."""
        return replace(self, phase=phase)

    def finished(self) -> Keys:
        """The keys after the rotation completes: the next key is the current one."""
        assert self.next is not None
        return Keys(current=self.next, record=self.record)


def _parse(store: SopsStore, value: Secret, spec: CacheSpec, which: str) -> None:
    try:
        name = key_name(value)
    except InputError as exc:
        raise SecretsFileError(
            f"{spec.sops_key(which)}: {exc.message}", file=store.display(SOPS_FILE)
        ) from None
    if not name.startswith(spec.name + "-"):
        raise SecretsFileError(
            f"{spec.sops_key(which)} is named {name!r}, expected {spec.name}-<generation>",
            file=store.display(SOPS_FILE),
        )


def load_keys(ctx: PlanContext, spec: CacheSpec, task: str) -> tuple[Keys, list[Change]]:
    """The cache's keys as this run sees them, and the change storing a new one if there was none.

    The result is remembered in ``ctx.state`` so every task of a run works
    with the same keys (including one generated by an earlier task's plan).
    """
    slot: dict[str, Keys] = ctx.state.setdefault(_STATE_KEY, {})
    if spec.name in slot:
        return slot[spec.name], []
    store = ctx.secrets()
    values = store.read(SOPS_FILE, missing_ok=True)
    current, nxt = values.get(spec.sops_key(CURRENT)), values.get(spec.sops_key(NEXT))
    record = read_records(state_path(store)).get(spec.name, CacheRecord())
    changes: list[Change] = []
    if current is None:
        if nxt is not None:
            raise SecretsFileError(
                f"{spec.sops_key(NEXT)} exists without {spec.sops_key(CURRENT)}; restore the current key",
                file=store.display(SOPS_FILE),
            )
        made = generators.generate("nix-cache-key", {"name": spec.key_name(1)})
        current = made.value
        changes.append(_store_new_key(ctx, spec, current, made.public or "", task))
        record = CacheRecord()
    else:
        _parse(store, current, spec, CURRENT)
        if nxt is not None:
            _parse(store, nxt, spec, NEXT)
    # A next key in sops means a rotation started, even if the run died
    # before it could write the phase marker.
    phase = (record.phase or PHASES[0]) if nxt is not None else None
    keys = Keys(current=current, next=nxt, phase=phase, record=record)
    slot[spec.name] = keys
    return keys, changes


def remember(ctx: PlanContext, spec: CacheSpec, keys: Keys) -> None:
    """Make later tasks of this run plan against ``keys`` (e.g. the keys after a planned rotation)."""
    ctx.state.setdefault(_STATE_KEY, {})[spec.name] = keys


def _store_new_key(ctx: PlanContext, spec: CacheSpec, value: Secret, public: str, task: str) -> Change:
    sops_key = spec.sops_key(CURRENT)
    return Change(
        LOCAL,
        task,
        f"generate signing key {key_name(value)} and store it in secrets/{SOPS_FILE} ({sops_key})",
        op="binary_cache.store_key",
        args={"cache": spec.name, "sops_key": sops_key, "value": value},
        diff=f"+ public key {public}",
        phase=0,
        action="create",
    )


@action("binary_cache.store_key")
def store_new_key(local: LocalContext, cache: str, sops_key: str, value: Secret) -> None:
    """Store the cache's first signing key, generated when the plan was made (the one it shows)."""
    store = SopsStore(local.root / "secrets")
    # Stored before anything else uses it: a crash later loses nothing.
    present = store.get(SOPS_FILE, sops_key)
    if present == value:
        return  # stored already (the same plan applied again)
    if present is not None:
        raise SecretsError(f"{sops_key} appeared in {SOPS_FILE} since this plan was made; run again")
    store.write(SOPS_FILE, {sops_key: value})
    update_record(
        state_path(store),
        cache,
        current=key_name(value),
        next=None,
        phase=None,
        created=format_time(utcnow()),
    )
