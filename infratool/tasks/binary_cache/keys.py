"""The cache's signing keys: where they are kept, and which one does what right now.

Secret material lives only in sops (``secrets/binary-cache.yaml``)::

    binary-cache:
      snix-cache:
        secret-key: "snix-cache-1:base64..."        # the current key
        next-secret-key: "snix-cache-2:base64..."   # only while a rotation runs

Beside it, the one rotation state file (``secrets/.rotation-state.yaml``)
holds the cache's entry ``cache-key/<cache>``: when the current key was made
(its age), the generation, and the phase of a rotation in progress (the last
phase done) — never a value — so a rotation cut short by a crash is resumed
by the next run, and reviewers can read it. The old
``secrets/.binary-cache-state.yaml`` is still read (folded in by
:func:`infratool.rotation.state.load_dir`) until the cache's entry is written.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

from infratool.changes import LOCAL, Change, action
from infratool.context import LocalContext
from infratool.errors import InputError, SecretsError, SecretsFileError
from infratool.rotation import state
from infratool.rotation.state import SecretState
from infratool.secrets import generators
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore
from infratool.tasks.base import PlanContext
from infratool.tasks.binary_cache.spec import CacheSpec

SOPS_FILE = "binary-cache.yaml"
"""The sops file (relative to ``<flake>/secrets``) holding every cache's keys."""
CURRENT = "secret-key"
NEXT = "next-secret-key"

PHASES = ("trust-new", "resign", "drop-old", "retire")
"""Rotation phases, in order; each names the state the fleet is being moved to.

* ``trust-new``: clients trust the current *and* the next key; current signs.
* ``resign``: the next key signs; the whole cache is re-signed with it.
* ``drop-old``: clients trust only the next key.
* ``retire``: the next key becomes the current one in sops; the old one is deleted.

The state file records the last phase *done* (the engine's markers); the old
state file recorded the phase being moved to (:data:`LEGACY_DONE`).
"""
KIND = "cache-key"
"""The rotation kind of a cache's signing key (state entries ``cache-key/<cache>``)."""
LEGACY_DONE = {"trust-new": None, "resign": "trust-new", "drop-old": "resign", "retire": "drop-old"}
"""``.binary-cache-state.yaml``'s phase (being moved to) → the last phase done."""
_STATE_KEY = "binary-cache"


@dataclass(frozen=True)
class Progress:
    """Where a cache's key stands in the one state file."""

    entry: SecretState
    marker: str | None = None
    """The last rotation step marked done (``trust-new:config``, ``resign``, ...), if any."""
    promoting: bool = False
    """The engine was promoting the next key when the run stopped."""

    @property
    def done(self) -> str | None:
        """The last whole phase done (``trust-new``, ``resign`` or ``drop-old``), if any."""
        if self.marker is None:
            return None
        whole, _, step = self.marker.partition(":")
        if not step:
            return whole
        i = PHASES.index(whole)
        return PHASES[i - 1] if i else None


def progress(secrets_dir: Path, cache: str) -> Progress:
    """The state of ``cache``'s key: its record, the last step done, a promotion under way."""
    key = state.key(KIND, cache)
    own = state.load(state.state_path(secrets_dir)).rotations.get(key)
    entry = own or state.load_dir(secrets_dir).rotations.get(key) or SecretState()
    phase = entry.phase
    if own is None:  # from .binary-cache-state.yaml: it named the phase being moved to
        return Progress(entry, LEGACY_DONE.get(phase or ""))
    if phase == "promoting":
        return Progress(entry, "drop-old", promoting=True)
    if phase and phase.partition(":")[0] in PHASES[:3]:
        return Progress(entry, phase)
    return Progress(entry)  # idle, or "stored": begin done, no step yet


def record_key(secrets_dir: Path, cache: str, current: str, result: str) -> None:
    """Record that ``current`` is now the cache's key: generation + 1, age 0, no rotation pending."""
    with state.locked(state.state_path(secrets_dir)) as records:
        entry = records.get(state.key(KIND, cache))
        entry.promoted(result=result)
        entry.extra = {"current": current}


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
    progress: Progress = field(default_factory=lambda: Progress(SecretState()), compare=False)

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
        return Keys(current=self.next, progress=self.progress)


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
    where = progress(store.repo, spec.name)
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
        where = Progress(SecretState())
    else:
        _parse(store, current, spec, CURRENT)
        if nxt is not None:
            _parse(store, nxt, spec, NEXT)
    # A next key in sops means a rotation started, even if the run died before it
    # recorded anything: the fleet is moving to the phase after the last one done.
    phase = PHASES[PHASES.index(where.done) + 1 if where.done else 0] if nxt is not None else None
    keys = Keys(current=current, next=nxt, phase=phase, progress=where)
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
    record_key(store.repo, cache, key_name(value), "generated")
