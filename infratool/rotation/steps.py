"""The engine's own actions: ``rotation.begin``, ``.mark``, ``.settle``, ``.finish``.

:func:`infratool.rotation.engine.plan_changes` puts them in a plan; this
module carries them out (see the protocol in :mod:`infratool.rotation.engine`).
Each re-reads the sops file and the state file at apply time.
"""

from __future__ import annotations

from typing import Any

from infratool.changes import NothingToDo, action, lookup
from infratool.errors import SecretsError, VerifyError
from infratool.faults import fault_point
from infratool.rotation import state
from infratool.rotation.engine import (
    ROLLBACK_CHECK,
    ROLLING_BACK,
    edit_state,
    hold_lock,
    release_lock,
    rolling_back,
    state_file,
    store_for,
)
from infratool.secrets.secret import Secret


def _record(st: state.RotationState, members: list[str], **record: Any) -> None:
    for m in members:
        st.get(m).record(**record)


@action("rotation.begin")
def begin(
    ctx: Any, kind: str, file: str, secrets_dir: str, units: list[dict], lock_wait: float | None
) -> None:
    """Lock, refuse a stale plan, store the pending material (one sops write), record it."""
    store = store_for(secrets_dir)
    path = store.path(file)
    path.parent.mkdir(parents=True, exist_ok=True)
    hold_lock(path, lock_wait)
    store.invalidate(file)
    held = store.read(file, missing_ok=True)
    st = state.load(state_file(secrets_dir))
    staged: dict[str, Secret | None] = {}
    for unit in units:
        entry = st.get(unit["key"])
        moved = any(held.get(k) != v for k, v in unit["expect"].items())
        if moved or entry.generation != unit["generation"]:
            release_lock(path)
            raise SecretsError(
                f"the rotation of {unit['label']} moved on since this plan was made; run again"
            )
        staged.update(unit["pending"])
    if staged:
        fault_point("generated")
        store.write(file, staged)
    with edit_state(secrets_dir) as st:
        for unit in units:
            st.get(unit["key"]).checks = {}
            _record(st, unit["members"], status="pending", result="pending stored", phase="stored")
    fault_point("stored")


@action("rotation.mark")
def mark(ctx: Any, kind: str, file: str, secrets_dir: str, keys: list[str], phase: str) -> None:
    """Record that ``phase`` is done on every participant (the next run resumes after it)."""
    with edit_state(secrets_dir) as st:
        _record(st, keys, status="pending", result=f"phase {phase} done", phase=phase)


def _problems(entry: state.SecretState, unit: dict) -> list[str]:
    checks = entry.checks
    out = [f"{t}: {checks[t]}" if checks[t] else t for t in unit["checks"] if checks.get(t)]
    missing = [t for t in unit["checks"] if t not in checks]
    out += [f"{t}: not verified (its host failed)" for t in missing]
    return out


@action("rotation.settle")
def settle(
    ctx: Any, kind: str, file: str, secrets_dir: str, units: list[dict], hooks: dict[str, str]
) -> None:
    """Promote every unit whose checks passed (one sops write); mark the others for rollback."""
    if not _any_failed(secrets_dir, units):
        fault_point("verified")
    st = state.load(state_file(secrets_dir))
    good = [u for u in units if not _problems(st.get(u["key"]), u)]
    bad = [u for u in units if u not in good]
    if bad:
        with edit_state(secrets_dir) as st:
            for u in bad:
                why = "; ".join(_problems(st.get(u["key"]), u))
                _record(
                    st, u["members"], status="pending", result="rolling back", error=why, phase=ROLLING_BACK
                )
    if not good:
        return
    # Recorded first, so a crash right after the sops write is recognised as a
    # finished promotion (not rotated a second time).
    with edit_state(secrets_dir) as st:
        for u in good:
            _record(st, u["members"], status="pending", result="promoting", phase="promoting")
    fault_point("promoting")
    update: dict[str, Secret | None] = {}
    for u in good:
        update.update(u["promote"])
    store = store_for(secrets_dir)
    store.invalidate(file)
    store.write(file, update)
    fault_point("promoted")
    with edit_state(secrets_dir) as st:
        for u in good:
            for m in u["members"]:
                st.get(m).promoted()
            st.get(u["key"]).checks = {}
    if "promoted" in hooks:
        _hook(ctx, hooks["promoted"], file, secrets_dir, keys=[u["key"] for u in good])


def _hook(ctx: Any, hook: Any, file: str, secrets_dir: str, **extra: Any) -> None:
    if isinstance(hook, str):
        lookup(hook)(ctx, file=file, secrets_dir=secrets_dir, **extra)
    else:
        lookup(hook["op"])(ctx, **hook.get("args", {}), **extra)


def _any_failed(secrets_dir: str, units: list[dict]) -> bool:
    st = state.load(state_file(secrets_dir))
    return any(_problems(st.get(u["key"]), u) for u in units)


@action("rotation.finish")
def finish(
    ctx: Any, kind: str, file: str, secrets_dir: str, units: list[dict], hooks: dict[str, str]
) -> NothingToDo | None:
    """Discard what rolled back (one sops write), record it failed, release the lock; raise if any."""
    store = store_for(secrets_dir)
    path = store.path(file)
    try:
        bad = rolling_back(secrets_dir, [u["key"] for u in units])
        if not bad:
            return NothingToDo("nothing rolled back (the rotation lock is released)")
        fault_point("rolled-back")
        st = state.load(state_file(secrets_dir))
        discard: dict[str, Secret | None] = {}
        messages = []
        for u in units:
            if u["key"] not in bad:
                continue
            discard.update(u["discard"])
            entry = st.get(u["key"])
            problems = "; ".join(_problems(entry, u))
            rollback = _rollback_summary(entry, u["checks"])
            messages.append(f"rotation of {u['label']} failed: verify failed on {problems}; {rollback}")
        store.invalidate(file)
        store.write(file, discard)
        fault_point("discarded")
        with edit_state(secrets_dir) as st:
            for u in units:
                if u["key"] in bad:
                    why = "; ".join(_problems(st.get(u["key"]), u))
                    _record(st, u["members"], status="failed", result="rolled back", error=why, phase=None)
                    st.get(u["key"]).checks = {}
        error = " | ".join(messages)
        if "discarded" in hooks:
            _hook(ctx, hooks["discarded"], file, secrets_dir, keys=bad, error=error)
        raise VerifyError(error)
    finally:
        release_lock(path)


def _rollback_summary(entry: state.SecretState, targets: list[str]) -> str:
    """What the rollback changes recorded; a target that recorded nothing did not roll back."""
    results = {k[len(ROLLBACK_CHECK) :]: v for k, v in entry.checks.items() if k.startswith(ROLLBACK_CHECK)}
    first = [v for v in results.values() if v and v.startswith("no previous value")]
    if first:
        return first[0]
    broken = sorted({t for t, v in results.items() if v} | {t for t in targets if t not in results})
    if broken:
        return f"ROLLBACK INCOMPLETE on {', '.join(broken)}: the current value does not verify there"
    return "every consumer is back on the current value"
