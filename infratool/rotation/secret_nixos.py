"""The ``secret`` kind's NixOS consumers: the value goes through sops-nix and a deploy, not over SSH.

A consumer on an ``os: nixos`` host gets its value from sops-nix at
activation, out of the sops file in the flake (:mod:`.sopsnix` generates the
host's ``sops.secrets`` entries). The staged protocol, on the one engine
(:mod:`.engine`), for a rotation with NixOS consumers:

1. **begin** (engine): the new value is stored as pending;
2. **write** (``rotation.secret.nixos_write``, the rotation's local target):
   the value becomes the secret's value in the sops file, the old one goes to
   ``_rotation/previous/<name>``, and each NixOS consumer host's module is
   (re)generated — before anything is built;
3. **deliver**: every NixOS consumer host is built, copied and activated with
   ``switch-to-configuration test`` under the deploy engine's watchdog
   (``rotation.secret.nixos_activate``), while linux consumers get theirs
   over SSH as before; the watchdog's confirm timeout is sized from the plan
   so it covers the verify phase;
4. **verify** every consumer, linux and NixOS alike (the same verify
   commands, fed the new value on stdin);
5. **commit** (``rotation.secret.nixos_commit``, over a new connection): a
   host whose secrets all verified everywhere confirms (``boot``); one where
   any of them failed aborts, so its watchdog reactivates the previous
   generation (and the other secrets on that host roll back with it: one
   generation holds them all). Then the engine's **settle** promotes.

On a failed check the rollback phases put things back: **restore**
(``rotation.secret.nixos_restore``) writes the previous value back into the
sops file (and the modules), so no later deploy reinstalls the new one; then
on each NixOS host ``rotation.secret.nixos_rollback`` checks that the old
value verifies there, and when the host had committed the new generation (or
the old value does not verify) deploys the restored configuration. The
engine's *finish* discards the pending value and exits 1.

A crash anywhere leaves a pending value in sops: the next run resumes from
the write (which is idempotent; :func:`.secret_nixos_plan.effective_held` recognises a value
already written, so "previous" stays the old value), and a watchdog left
waiting is superseded by the next activation or rolls its host back after
the timeout. Fault points: ``written``, ``activated`` (after a NixOS host's
activation, its watchdog waiting), ``committed`` (after a host committed).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infratool import log
from infratool.changes import action
from infratool.deploy.build import build, copy
from infratool.deploy.engine import activate, error_text, finish, reconnect
from infratool.faults import fault_point
from infratool.rotation import engine, sopsnix, state
from infratool.rotation.policy import SecretPolicy
from infratool.rotation.secret import verify_retrying
from infratool.secrets.secret import REDACTOR, Secret

_log = log.get_logger("infratool.rotation")

WRITE_OP = "rotation.secret.nixos_write"
ACTIVATE_OP = "rotation.secret.nixos_activate"
COMMIT_OP = "rotation.secret.nixos_commit"
RESTORE_OP = "rotation.secret.nixos_restore"
ROLLBACK_OP = "rotation.secret.nixos_rollback"
VERIFY_RETRY = 10.0
"""Seconds the verify phase of a rotation with NixOS consumers retries failing verifies."""


def installed_problem(
    host: Any, spec: SecretPolicy, consumer: Any, values: Mapping[str, Secret]
) -> str | None:
    """Drift check of a NixOS consumer: does sops-nix's file hold the current value? ``"HOST: problem"``.

    The value goes to ``cmp`` on stdin and is compared on the host; nothing
    of it comes back. A host running another generation than the flake's
    (rolled back by hand, never deployed) holds another value there.
    """
    path = consumer.file.path if consumer.file is not None else f"/run/secrets/{spec.name}"
    res = host.run(
        f"cmp -s - {shlex.quote(path)}", stdin=values[spec.key], check=False, what=f"compare {spec.name}"
    )
    if res.ok:
        return None
    return (
        f"{consumer.host}: {path} does not hold the current value (the host does not run the "
        "flake's configuration: deploy it, or `secrets rotate` the secret)"
    )


# -- the actions ------------------------------------------------------------------------------


def _problem(exc: BaseException) -> str:
    return error_text(exc) or type(exc).__name__


@action(WRITE_OP)
def write(
    ctx: Any,
    secrets_dir: str,
    flake: str,
    confirm_timeout: int,
    file: str,
    update: dict[str, Secret | None],
    modules: dict[str, list[dict[str, Any]]],
) -> None:
    """Step 2: the new values become the secrets' values in sops (old ones kept as previous); modules."""
    store = engine.store_for(secrets_dir)
    store.invalidate(file)
    if update:
        store.write(file, update)
    fault_point("written")
    sopsnix.write_modules(flake, modules, store)


@action(ACTIVATE_OP)
def activate_host(
    ctx: Any, secrets_dir: str, flake: str, confirm_timeout: int, units: list[str], batch: dict[str, Any]
) -> None:
    """Step 3: build, copy, ``switch-to-configuration test`` under the watchdog; record failures per unit."""
    problem = None
    try:
        toplevel = build(Path(flake), ctx.host, None, batch)
        copy(ctx.remote, ctx.host, toplevel, None)
        result = activate(ctx.remote, toplevel, confirm_timeout)
        _log.info("rotation: host activated", host=ctx.name, status=result.word)
        if result.final:
            problem = f"activation failed: the host {result.word} ({result.detail})"
    except Exception as exc:  # any failure is this host's, and rolls its secrets back
        problem = f"deploy failed: {_problem(exc)}"
    for unit in units:
        engine.record_check(secrets_dir, unit, ctx.name, problem)
    fault_point("activated")


def _failed(st: state.RotationState, unit: str, targets: list[str]) -> str | None:
    """The first problem recorded for ``unit`` on any of its targets (a target with none: not checked)."""
    checks = st.get(unit).checks
    for t in targets:
        if t not in checks:
            return f"{t}: not verified"
        if checks[t]:
            return f"{t}: {checks[t]}"
    return None


@action(COMMIT_OP)
def commit(
    ctx: Any,
    secrets_dir: str,
    flake: str,
    confirm_timeout: int,
    units: list[str],
    checks: dict[str, list[str]],
) -> None:
    """Step 5: over a new connection, commit (``boot``) when every secret of this host verified, else abort.

    One generation holds all of the host's secrets, so they commit or roll
    back together: a secret that verified here but failed elsewhere takes
    the others of this host back with it (recorded as their problem).
    """
    st = state.load(engine.state_file(secrets_dir))
    failed = {u: p for u in units if (p := _failed(st, u, checks[u]))}
    verdict = REDACTOR.redact("; ".join(failed.values()))[:300] if failed else None
    try:
        remote = reconnect(ctx.host, time.monotonic() + 30)
        try:
            final = finish(remote, verdict, confirm_timeout)
        finally:
            remote.close()
        problem = (
            None if final.word == "committed" else f"not committed: the host {final.word} ({final.detail})"
        )
    except Exception as exc:
        problem = f"commit failed: {_problem(exc)}"
    if problem is None:
        # The host's deploy-pending mark (if another task left one) stays: a deploy of this
        # host planned later in the same run may still fail, and it clears the mark itself.
        fault_point("committed")
    for unit in units:
        if unit in failed:
            continue
        why = problem
        if failed and why is None:
            why = "rolled back with " + ", ".join(failed)
        elif failed:
            why = f"{why}; rolled back with {', '.join(failed)}"
        engine.record_check(secrets_dir, unit, ctx.name, why)


@action(RESTORE_OP)
def restore(
    ctx: Any,
    secrets_dir: str,
    flake: str,
    confirm_timeout: int,
    file: str,
    restore: dict[str, dict[str, Secret | None]],
    modules: dict[str, list[dict[str, Any]]],
) -> None:
    """Rollback: the previous values back as the secrets' values in sops (before any redeploy)."""
    back = engine.rolling_back(secrets_dir, list(restore))
    if not back:
        return
    update: dict[str, Secret | None] = {}
    for unit in back:
        update.update(restore[unit])
    store = engine.store_for(secrets_dir)
    store.invalidate(file)
    store.write(file, update)
    sopsnix.write_modules(flake, modules, store)


@action(ROLLBACK_OP)
def rollback(
    ctx: Any, secrets_dir: str, flake: str, confirm_timeout: int, units: list[str], items: list[dict]
) -> None:
    """Rollback on a NixOS host: the previous values verify there, or the restored flake is deployed."""
    back = set(engine.rolling_back(secrets_dir, units))
    if not back:
        return
    mine = [i for i in items if i["unit"] in back]
    firsts = {i["unit"] for i in mine if i.get("first")}
    for unit in firsts:
        engine.record_rollback(
            secrets_dir, unit, ctx.name, "no previous value to roll back to (first rotation)"
        )
    todo = [v for i in mine if i["unit"] not in firsts for v in i.get("verify", [])]
    todo_units = {i["unit"] for i in mine} - firsts
    problems: dict[str, str] = {}
    try:
        remote = reconnect(ctx.host, time.monotonic() + confirm_timeout + 30)
        try:
            # Stop a watchdog still waiting (a commit step that never ran): the previous generation.
            final = finish(remote, "the rotation rolled back", confirm_timeout)
            problems = verify_retrying(remote, todo, set(), VERIFY_RETRY)
            if final.word == "committed" or problems:
                problems = _redeploy(remote, ctx, flake, confirm_timeout, todo)
        finally:
            remote.close()
    except Exception as exc:
        problems = {u: f"rollback failed: {_problem(exc)}" for u in todo_units}
    for unit in todo_units:
        engine.record_rollback(secrets_dir, unit, ctx.name, problems.get(unit))
    fault_point("rolled-back-one")


def _redeploy(remote: Any, ctx: Any, flake: str, timeout: int, verify: list[dict]) -> dict[str, str]:
    """Deploy the restored flake (previous values) on this host: activate, verify, commit; problems by unit."""
    toplevel = build(Path(flake), ctx.host)
    copy(remote, ctx.host, toplevel)
    act = activate(remote, toplevel, timeout)
    if act.final:
        return {
            v["unit"]: f"redeploy of the previous value failed: {act.word} ({act.detail})" for v in verify
        }
    problems = verify_retrying(remote, verify, set(), VERIFY_RETRY)
    verdict = REDACTOR.redact("; ".join(problems.values()))[:300] if problems else None
    final = finish(remote, verdict, timeout)
    if final.word != "committed" and not problems:
        problems = {v["unit"]: f"redeploy not committed: {final.word} ({final.detail})" for v in verify}
    return problems
