"""The one rotation engine: begin → phases → promote, or roll back; as planned changes.

Every kind of rotation (:mod:`infratool.rotation.kinds`) follows the same
protocol, which this module turns into :class:`~infratool.changes.Change`
data that the runner applies (and a plan file stores):

1. **begin** (on the rotation's local target ``local:<kind>/<file>``): take
   the sops file's rotation lock and hold it until *finish* (the kernel drops
   it on ``kill -9``); refuse a stale plan (the state or the pending values
   moved on since the plan was made); store every unit's new material —
   generated at **plan** time and carried in the change's args as
   :class:`~infratool.secrets.secret.Secret` — as pending in sops, in one
   write, *before* any host sees it; record ``pending/stored``.
2. the kind's **phases**, in order, each a list of changes on their own
   targets (``phase`` numbers keep them apart: every change of one phase
   finishes on every host before the next starts). A phase is either
   *checked* — its changes record per unit and host whether delivery and
   verification worked (:func:`record_check`) instead of failing the host,
   so a failure leads to a rollback — or *marked* — its changes raise on
   failure, and a marker change after it records the phase in the state
   file, so the next run resumes after the last marked phase.
3. **settle**: every unit whose checks all passed is promoted, all of them
   in one sops write (state "promoting" recorded first, so a crash between
   the two is recognised, not rotated twice); a unit with a failed or
   missing check is marked ``rolling-back``.
4. the kind's **rollback** phases: their changes act only for the units
   marked ``rolling-back`` (:func:`rolling_back`), putting the current
   material back and recording the outcome.
5. **finish**: one sops write discards the pending material of the units
   rolled back; their state says ``failed`` with the problem; the lock is
   released; a rollback fails the target (exit 1).

One state file (:mod:`infratool.rotation.state`) keyed ``kind/name``, one
lock per sops file (:mod:`infratool.rotation.lock`), held by this process
from begin to finish. Every action re-reads what it needs (sops, state) at
apply time and relies on nothing set while planning, so a saved plan is
applied by a fresh process exactly as shown.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infratool import log
from infratool.changes import LOCAL, Change
from infratool.rotation import state
from infratool.rotation.lock import rotation_lock
from infratool.secrets.secret import REDACTOR, Secret
from infratool.secrets.store import SopsStore

ROLLING_BACK = "rolling-back"
"""The state phase of a unit whose check failed, until *finish* discards its pending material."""

_log = log.get_logger("infratool.rotation")


@dataclass
class Unit:
    """What promotes or rolls back as one: a secret and those derived from it; one cache key."""

    key: str
    """State key of the unit (``secret/postgres/app``): its checks are recorded there."""
    label: str
    """How messages name it (``postgres/app + postgres/hash``)."""
    members: list[str] = field(default_factory=list)
    """Every state key the unit covers (defaults to ``[key]``); all get the same record."""
    pending: dict[str, Secret] = field(default_factory=dict)
    """sops key → new material that *begin* stores (empty when resuming what is stored)."""
    expect: dict[str, Secret | None] = field(default_factory=dict)
    """sops key → what the plan saw there (``None``: absent): begin refuses the plan otherwise.
    Covers at least the pending keys, so resumed material is the material planned."""
    promote: dict[str, Secret | None] = field(default_factory=dict)
    """The sops update that promotes the unit (``None`` deletes a key)."""
    discard: dict[str, Secret | None] = field(default_factory=dict)
    """The sops update that drops its pending material after a rollback."""
    checks: list[str] = field(default_factory=list)
    """Targets whose check must pass for the unit to promote (checked phases)."""
    generation: int = 0
    """The state's generation when planned: begin refuses the plan if it moved on."""
    resume: bool = False
    """Shorthand for kinds that resume all-or-nothing: ``pending`` is already stored (an
    interrupted run), so begin only checks it is there (``expect``) and writes nothing."""

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [self.key]
        if not self.expect:
            # What begin must find: the resumed material, or nothing pending yet.
            self.expect = {k: (v if self.resume else None) for k, v in self.pending.items()}
        if self.resume:
            self.pending = {}

    def to_args(self) -> dict[str, Any]:
        """The unit as change args (plain data and Secrets)."""
        return {
            "key": self.key,
            "label": self.label,
            "members": list(self.members),
            "pending": dict(self.pending),
            "expect": dict(self.expect),
            "promote": dict(self.promote),
            "discard": dict(self.discard),
            "checks": list(self.checks),
            "generation": self.generation,
        }


@dataclass
class Phase:
    """One named step of a rotation: changes on their own targets."""

    name: str
    changes: list[Change]
    checked: bool = False
    """Changes record outcomes with :func:`record_check` (a failure rolls back) instead of raising."""


@dataclass
class Rotation:
    """A planned rotation of one sops file's units (what the kind hands to :func:`plan_changes`)."""

    kind: str
    file: str
    """The sops file holding the units' material; its rotation lock is the rotation's lock."""
    secrets_dir: str
    """Where the sops files and the state file live (``<flake>/secrets``)."""
    units: list[Unit]
    phases: list[Phase]
    task: str
    rollback: list[Phase] = field(default_factory=list)
    lock_wait: float | None = 0
    hooks: dict[str, Any] = field(default_factory=dict)
    """Kind actions the engine calls: ``promoted`` (after the promote write, with ``keys=``)
    and ``discarded`` (after the discard write, with ``keys=`` and ``error=``). Either an
    action name (called with ``file=`` and ``secrets_dir=`` too) or ``{"op": name, "args": {...}}``."""
    resume_after: str | None = None
    """The last marked phase already done (its predecessors are not planned again)."""
    description: str = ""

    @property
    def target(self) -> str:
        """The local pseudo-target of the rotation's own steps (begin, markers, settle, finish)."""
        return f"{LOCAL}:{self.kind}/{Path(self.file).name}"

    def common(self) -> dict[str, Any]:
        """Args every engine action of this rotation gets."""
        return {"kind": self.kind, "file": self.file, "secrets_dir": self.secrets_dir}


def plan_changes(rot: Rotation, first_phase: int = 0) -> list[Change]:
    """The rotation as changes: begin, each phase (with markers), settle, rollback, finish.

    ``first_phase``: the runner phase number of *begin* (the others follow).
    The kind's changes get their ``phase`` numbers and ``requires`` here: every
    change requires the rotation's target (a refused begin stops everything),
    and a change after a marked phase also requires that phase's targets.
    """
    n = first_phase
    units = [u.to_args() for u in rot.units]
    labels = ", ".join(u.label for u in rot.units)
    begin_what = "resume" if not any(u.pending for u in rot.units) else "store new material as pending for"
    out = [
        Change(
            rot.target,
            rot.task,
            rot.description or f"begin rotation: {begin_what} {labels} in {Path(rot.file).name}",
            op="rotation.begin",
            args={**rot.common(), "units": units, "lock_wait": rot.lock_wait},
            action="update",
            phase=n,
            diff="\n".join(f"+ pending {k}" for u in rot.units for k in u.pending) if rot.units else "",
        )
    ]
    participants: tuple[str, ...] = ()
    phases = rot.phases
    if rot.resume_after is not None:
        names = [p.name for p in phases]
        phases = phases[names.index(rot.resume_after) + 1 :] if rot.resume_after in names else phases
    for phase in phases:
        n += 1
        for c in phase.changes:
            c.phase = n
            c.requires = tuple(dict.fromkeys((rot.target, *participants, *c.requires)))
            out.append(c)
        if not phase.checked:
            participants = tuple(dict.fromkeys((*participants, *(c.host for c in phase.changes))))
            n += 1
            out.append(
                Change(
                    rot.target,
                    rot.task,
                    f"{labels}: phase {phase.name} done (state marker)",
                    op="rotation.mark",
                    args={
                        **rot.common(),
                        "keys": [m for u in rot.units for m in u.members],
                        "phase": phase.name,
                    },
                    action="update",
                    phase=n,
                    requires=participants,
                )
            )
    n += 1
    out.append(
        Change(
            rot.target,
            rot.task,
            f"promote {labels} (one sops write; any unit whose check failed rolls back instead)",
            op="rotation.settle",
            args={**rot.common(), "units": units, "hooks": dict(rot.hooks)},
            action="update",
            phase=n,
            requires=participants,
        )
    )
    for phase in rot.rollback:
        n += 1
        for c in phase.changes:
            c.phase = n
            c.requires = tuple(dict.fromkeys((rot.target, *c.requires)))
            out.append(c)
    n += 1
    out.append(
        Change(
            rot.target,
            rot.task,
            f"finish the rotation of {labels} (discard what rolled back; release the lock)",
            op="rotation.finish",
            args={**rot.common(), "units": units, "hooks": dict(rot.hooks)},
            action="update",
            phase=n,
        )
    )
    return out


# -- the lock, held from begin to finish ------------------------------------------------

_HELD: dict[Path, contextlib.ExitStack] = {}
_HELD_GUARD = threading.Lock()


def hold_lock(path: Path, wait: float | None) -> None:
    """Take the rotation lock of sops file ``path`` and keep it until :func:`release_lock`.

    Held by this process (the kernel drops it when the process dies, even by
    ``kill -9``); taking it again in the same process is a no-op.
    """
    with _HELD_GUARD:
        if path in _HELD:
            return
    stack = contextlib.ExitStack()
    stack.enter_context(rotation_lock(path, wait=wait))
    with _HELD_GUARD:
        _HELD[path] = stack


def release_lock(path: Path) -> None:
    """Release the lock :func:`hold_lock` took (no-op if not held)."""
    with _HELD_GUARD:
        stack = _HELD.pop(path, None)
    if stack is not None:
        stack.close()


# -- state helpers the kinds' actions use ---------------------------------------------

_STORES: dict[Path, SopsStore] = {}


def store_for(secrets_dir: str | Path) -> SopsStore:
    """The sops store of ``secrets_dir`` (one per process; callers invalidate before reading)."""
    path = Path(secrets_dir).resolve()
    with _HELD_GUARD:
        if path not in _STORES:
            _STORES[path] = SopsStore(path)
        return _STORES[path]


def use_store(store: Any) -> None:
    """Make the actions use ``store`` for its directory (the CLI's store; a test's fake one)."""
    with _HELD_GUARD:
        _STORES[Path(store.repo).resolve()] = store


def state_file(secrets_dir: str | Path) -> Path:
    """The one rotation state file of ``secrets_dir``."""
    return state.state_path(secrets_dir)


@contextlib.contextmanager
def edit_state(secrets_dir: str | Path) -> Iterator[state.RotationState]:
    """Read-modify-write the state file (under its own short lock)."""
    with state.locked(state_file(secrets_dir)) as st:
        yield st


def record_check(secrets_dir: str | Path, unit: str, target: str, problem: str | None) -> None:
    """Record the outcome of a checked change on ``target`` for ``unit`` (``None``: passed).

    The first problem a target reports for a unit stays (a later success of
    another step on that target does not hide it).
    """
    with edit_state(secrets_dir) as st:
        checks = st.get(unit).checks
        if problem is not None or target not in checks:
            checks[target] = REDACTOR.redact(problem) if problem else None


def check_problem(secrets_dir: str | Path, unit: str, target: str) -> str | None:
    """The problem already recorded for ``unit`` on ``target`` (``None``: none yet)."""
    return state.load(state_file(secrets_dir)).get(unit).checks.get(target)


def rolling_back(secrets_dir: str | Path, units: list[str]) -> list[str]:
    """Those of ``units`` that settle marked for rollback (rollback changes act only on these)."""
    st = state.load(state_file(secrets_dir))
    return [u for u in units if st.get(u).phase == ROLLING_BACK]


ROLLBACK_CHECK = "rollback:"
"""Prefix of the check key a rollback change records its outcome under (``rollback:brix``)."""


def record_rollback(secrets_dir: str | Path, unit: str, target: str, problem: str | None) -> None:
    """Record whether ``target`` is back on the current material for ``unit``."""
    with edit_state(secrets_dir) as st:
        st.get(unit).checks[ROLLBACK_CHECK + target] = REDACTOR.redact(problem) if problem else None


__all__ = [
    "ROLLING_BACK",
    "Phase",
    "Rotation",
    "Unit",
    "check_problem",
    "edit_state",
    "hold_lock",
    "plan_changes",
    "record_check",
    "record_rollback",
    "release_lock",
    "rolling_back",
    "store_for",
]


# The actions (begin, mark, settle, finish) register themselves on import.
from infratool.rotation import steps as _steps  # noqa: E402, F401
