"""The ``secret`` kind on the engine: per-host deliver, verify and rollback changes.

A run's secrets that live in one sops file rotate as one engine
:class:`~infratool.rotation.engine.Rotation` (one begin write, one promote
write, one discard write: sops runs once per file, not once per secret).
Each group (a secret and those derived from it) is one
:class:`~infratool.rotation.engine.Unit`: it promotes or rolls back as one.

Per consumer host the plan has three changes, each carrying, as
:class:`~infratool.secrets.secret.Secret` args, the exact bytes it sends
(file content, command stdin), computed at plan time:

* ``rotation.secret.deliver`` — every consumer on that host, in one batch:
  the files in one write, then command deliveries, then each distinct
  reload command once;
* ``rotation.secret.verify`` — the host's verify commands with the new value;
* ``rotation.secret.rollback`` — only for units settle marked for rollback:
  the current value back, reloaded and verified.

Deliver and verify never fail their host: they record the outcome per unit
(:func:`~infratool.rotation.engine.record_check`), so one bad consumer rolls
back its secret and nothing else, and rollback still reaches that host.

Fault points for the chaos tests: ``delivered-one`` (after a host's first
consumer), ``delivered`` (every host delivered), ``rolled-back-one``; the
engine has the others (``generated``, ``stored``, ``verified``,
``promoting``, ``promoted``, ``rolled-back``, ``discarded``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infratool import log
from infratool.changes import NothingToDo, action
from infratool.errors import InfratoolError
from infratool.faults import fault_point
from infratool.rotation import engine, state
from infratool.rotation.policy import Notify, SecretPolicy
from infratool.secrets import generators
from infratool.secrets.secret import REDACTOR, Secret

KIND = "secret"
PENDING = "_rotation/pending/"
PREVIOUS = "_rotation/previous/"
LEASE = "_rotation/lease/"
PENDING_LEASE = "_rotation/pending-lease/"
RETIRE = "_rotation/retire/"

_log = log.get_logger("infratool.rotation")


def pending_key(name: str) -> str:
    """Where a secret's pending (not yet promoted) value is kept in its sops file."""
    return PENDING + name


def previous_key(name: str) -> str:
    """Where a secret's previous value is kept after promotion."""
    return PREVIOUS + name


def lease_key(name: str) -> str:
    """Where the lease id of a secret's current value is kept (``generator: vault``)."""
    return LEASE + name


def pending_lease_key(name: str) -> str:
    """Where the lease id of a secret's pending value is kept."""
    return PENDING_LEASE + name


def retire_key(name: str) -> str:
    """Where a promoted secret's previous lease waits until it is revoked."""
    return RETIRE + name


def state_key(name: str) -> str:
    """The state key of secret ``name``: ``secret/<name>``."""
    return state.key(KIND, name)


@dataclass
class Group:
    """One unit to rotate: a secret and those derived from it (sources first), and why."""

    members: list[SecretPolicy]
    reason: str

    @property
    def label(self) -> str:
        """``postgres/app + postgres/hash``."""
        return " + ".join(m.name for m in self.members)


def current_values(values: Mapping[str, Secret], specs: Mapping[str, SecretPolicy]) -> dict[str, Secret]:
    """The current value of each policy secret the sops file holds, by name."""
    return {n: values[s.key] for n, s in specs.items() if s.key in values}


# -- the actions ----------------------------------------------------------------------------


def _flush(ctx: Any) -> None:
    """Send queued file writes now, so their failure is this consumer's, caught here."""
    flush = getattr(ctx, "flush", None)
    if flush is not None:
        flush()


def _problem(exc: BaseException) -> str:
    return REDACTOR.redact(str(exc)) or type(exc).__name__


def _send(ctx: Any, items: list[dict], what: str) -> dict[str, str]:
    """Deliver ``items`` on ``ctx``'s host (files in one write, commands, reloads once); problems by unit."""
    problems: dict[str, str] = {}
    files = [i for i in items if "file" in i]
    try:
        for it in files:
            f = it["file"]
            ctx.put_file(f["path"], f["content"], mode=f["mode"], owner=f["owner"], group=f["group"])
        _flush(ctx)
    except Exception as exc:  # any failure here is this host's, recorded per unit
        for it in files:
            problems.setdefault(it["unit"], f"{it['file']['path']}: {_problem(exc)}")
    reloads: dict[str, list[str]] = {}
    for n, it in enumerate(items):
        if it["unit"] in problems:
            continue
        if "command" in it:
            try:
                ctx.run(it["command"]["run"], stdin=it["command"]["stdin"], what=f"{what} {it['secret']}")
            except Exception as exc:
                problems[it["unit"]] = _problem(exc)
                continue
        for cmd in it["reload"]:
            reloads.setdefault(cmd, []).append(it["unit"])
        if n == 0 and what == "deliver":
            fault_point("delivered-one")
    for cmd, units in reloads.items():
        if all(u in problems for u in units):
            continue
        try:
            ctx.run(cmd, what=f"reload after {what}")
        except Exception as exc:
            for u in units:
                problems.setdefault(u, _problem(exc))
    return problems


def _verify(ctx: Any, items: list[dict], skip: set[str]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for it in items:
        if it["unit"] in skip or it["unit"] in problems:
            continue
        try:
            res = ctx.run(it["run"], stdin=it["stdin"], check=False, what=f"verify {it['secret']}")
        except Exception as exc:
            problems[it["unit"]] = _problem(exc)
            continue
        if not res.ok:
            err = res.stderr.strip()
            problems[it["unit"]] = err.splitlines()[-1] if err else f"exit {res.exited}"
    return problems


def verify_retrying(ctx: Any, items: list[dict], skip: set[str], retry_for: float) -> dict[str, str]:
    """:func:`_verify`, tried again every 0.5 s while something fails, for up to ``retry_for`` seconds."""
    until = time.monotonic() + retry_for
    problems = _verify(ctx, items, skip)
    while problems and time.monotonic() < until:
        time.sleep(0.5)
        problems = _verify(ctx, items, skip)
    return problems


@action("rotation.secret.deliver")
def deliver(ctx: Any, secrets_dir: str, units: list[str], items: list[dict]) -> None:
    """Deliver the new values to this host's consumers; record a failure per unit (never raise)."""
    for unit, problem in _send(ctx, items, "deliver").items():
        engine.record_check(secrets_dir, unit, ctx.name, problem)


@action("rotation.secret.verify")
def verify(ctx: Any, secrets_dir: str, units: list[str], items: list[dict], retry_for: float = 0) -> None:
    """Run this host's verify commands with the new values; record each unit's outcome.

    ``retry_for``: seconds during which failing verifies are tried again. A
    rotation through sops-nix restarts units during activation, and a
    service that was just restarted may not listen yet (the deploy engine's
    checks retry for the same reason); a real failure still fails, later.
    """
    fault_point("delivered")
    failed = {u for u in units if engine.check_problem(secrets_dir, u, ctx.name)}
    problems = verify_retrying(ctx, items, failed, retry_for)
    for unit in units:
        engine.record_check(secrets_dir, unit, ctx.name, problems.get(unit))


@action("rotation.secret.rollback")
def rollback(ctx: Any, secrets_dir: str, units: list[str], items: list[dict]) -> NothingToDo | None:
    """For the units settle marked: put the current values back here, reload, verify; record it."""
    back = set(engine.rolling_back(secrets_dir, units))
    mine = [i for i in items if i["unit"] in back]
    if not mine:
        return NothingToDo("no check failed, nothing to put back")
    firsts = {i["unit"] for i in mine if i.get("first")}
    for unit in firsts:
        engine.record_rollback(
            secrets_dir, unit, ctx.name, "no previous value to roll back to (first rotation)"
        )
    todo = [i for i in mine if not i.get("first") and i["unit"] not in firsts]
    problems = _send(ctx, todo, "roll back")
    problems.update(_verify(ctx, [v for i in todo for v in i["verify"]], set(problems)))
    for unit in {i["unit"] for i in todo}:
        engine.record_rollback(secrets_dir, unit, ctx.name, problems.get(unit))
    fault_point("rolled-back-one")
    return None


def _retire(spec: Mapping[str, Any], lease_id: Secret) -> str | None:
    """Retire one lease through the generator; the problem, or ``None``."""
    retire = generators.get(spec["generator"]).retire
    if retire is None:
        return None
    try:
        retire(spec["params"], generators.Lease(lease_id, 0))
    except InfratoolError as exc:
        return REDACTOR.redact(str(exc))
    return None


def return_leases(specs: list[Mapping[str, Any]]) -> None:
    """Revoke leases issued for values that will never be used (best effort, logged)."""
    for spec in specs:
        if problem := _retire(spec, spec["pending_lease"]):
            _log.warning("could not revoke the unused new lease", secret=spec["name"], error=problem)


def retire_previous(secrets_dir: str, file: str, specs: list[Mapping[str, Any]]) -> str:
    """Revoke the previous leases waiting in sops; drop each once revoked; a summary."""
    store = engine.store_for(secrets_dir)
    store.invalidate(file)
    values = store.read(file, missing_ok=True)
    done: dict[str, Secret | None] = {}
    failed = []
    for spec in specs:
        old = values.get(retire_key(spec["key"]))
        if old is None:
            continue
        problem = _retire(spec, old)
        if problem:
            failed.append(spec["name"])
            _log.warning("previous lease not revoked; retried next run", secret=spec["name"], error=problem)
        else:
            done[retire_key(spec["key"])] = None
    if done:
        store.write(file, done)
    if failed:
        return f"previous lease of {', '.join(failed)} NOT revoked (retried next run)"
    return "previous lease revoked" if done else "nothing to revoke"


@action("rotation.secret.promoted")
def promoted(
    ctx: Any, secrets_dir: str, file: str, ttls: dict[str, int], retire: list[dict], keys: list[str]
) -> None:
    """After a promotion: record the new leases' durations, revoke the previous leases."""
    if ttls:
        with engine.edit_state(secrets_dir) as st:
            for name, ttl in ttls.items():
                if state_key(name) in st.rotations:
                    st.get(state_key(name)).lease_ttl = ttl
    specs = [r for r in retire if r["unit"] in keys]
    if specs:
        retire_previous(secrets_dir, file, specs)


@action("rotation.secret.discarded")
def discarded(
    ctx: Any,
    secrets_dir: str,
    file: str,
    leases: list[dict],
    notify: dict[str, Any] | None,
    keys: list[str],
    error: str,
) -> None:
    """After a rollback: return the unused new leases, tell the policy's notify target."""
    for spec in leases:
        if spec["unit"] not in keys:
            continue
        # The pending lease left sops with the value; the plan carried its id.
        return_leases([spec])
    if notify is not None:
        from types import SimpleNamespace

        from infratool.rotation.notify import notify as send

        target = Notify(command=notify["command"], url=notify["url"], events=tuple(notify["events"]))
        send(SimpleNamespace(notify=target), "failure", error)  # type: ignore[arg-type]


@action("rotation.secret.finalize")
def finalize(ctx: Any, secrets_dir: str, file: str, name: str, spec: dict[str, Any]) -> None:
    """Record a promotion a crash interrupted after the sops write; revoke a previous lease it left."""
    with engine.edit_state(secrets_dir) as st:
        st.get(state_key(name)).promoted(result="rotated (recorded after an interrupted run)")
    retire_previous(secrets_dir, file, [spec])


@action("rotation.secret.retire")
def retire_leftovers(
    ctx: Any, secrets_dir: str, file: str, lock_wait: float | None, spec: dict[str, Any]
) -> None:
    """Only revoke a previous lease an earlier run could not revoke (under the file's lock)."""
    store = engine.store_for(secrets_dir)
    path = store.path(file)
    engine.hold_lock(path, lock_wait)
    try:
        retire_previous(secrets_dir, file, [spec])
    finally:
        engine.release_lock(path)
