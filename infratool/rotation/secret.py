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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infratool import log
from infratool.changes import Change, action
from infratool.errors import InfratoolError, SecretsError
from infratool.faults import fault_point
from infratool.rotation import engine, state
from infratool.rotation.policy import Command, Consumer, Notify, Policy, SecretPolicy, render_template
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


# -- planning ---------------------------------------------------------------------------


class Planner:
    """Builds the engine rotation of one sops file's groups (values made now, at plan time)."""

    def __init__(self, policy: Policy, held: Mapping[str, Secret], provided: Mapping[str, Secret]) -> None:
        self.policy = policy
        self.held = dict(held)
        """The sops file's values as planned on (decrypted once)."""
        self.provided = provided

    def unit(self, group: Group, st: state.RotationState) -> tuple[engine.Unit, dict[str, Secret], dict]:
        """The unit of ``group``, the values it rotates to (by name), and lease facts for hooks."""
        pending: dict[str, Secret] = {}
        staged: dict[str, Secret] = {}
        expect: dict[str, Secret | None] = {}
        ttls: dict[str, int] = {}
        fresh: set[str] = set()
        for spec in group.members:
            found = self.held.get(pending_key(spec.key))
            expect[pending_key(spec.key)] = found
            # A value a person just gave replaces one an interrupted run left
            # pending, and whatever is derived from a new value is derived again.
            if found is None or spec.name in self.provided or fresh.intersection(spec.depends):
                fresh.add(spec.name)
                made = self._generate(spec, pending)
                staged[pending_key(spec.key)] = made.value
                if made.lease is not None:
                    staged[pending_lease_key(spec.key)] = made.lease.id
                    expect[pending_lease_key(spec.key)] = self.held.get(pending_lease_key(spec.key))
                    ttls[spec.name] = made.lease.ttl
                found = made.value
            pending[spec.name] = found
        promote: dict[str, Secret | None] = {}
        discard: dict[str, Secret | None] = {}
        retire: list[str] = []
        for spec in group.members:
            promote[spec.key] = pending[spec.name]
            promote[pending_key(spec.key)] = None
            discard[pending_key(spec.key)] = None
            discard[pending_lease_key(spec.key)] = None
            if spec.key in self.held:
                promote[previous_key(spec.key)] = self.held[spec.key]
            new_lease = staged.get(pending_lease_key(spec.key)) or self.held.get(pending_lease_key(spec.key))
            if new_lease is not None:
                promote[lease_key(spec.key)] = new_lease
                promote[pending_lease_key(spec.key)] = None
                old_lease = self.held.get(lease_key(spec.key))
                if old_lease is not None:
                    # Kept until Vault confirms the revoke: a crash or refusal retries it.
                    promote[retire_key(spec.key)] = old_lease
                    retire.append(spec.name)
        members = [state_key(m.name) for m in group.members]
        leases = []
        for spec in group.members:
            lease = staged.get(pending_lease_key(spec.key)) or self.held.get(pending_lease_key(spec.key))
            if lease is not None:
                leases.append({**_retire_spec(spec), "unit": members[0], "pending_lease": lease})
        unit = engine.Unit(
            key=members[0],
            label=group.label,
            members=members,
            pending=staged,
            expect=expect,
            promote=promote,
            discard=discard,
            checks=sorted({c.host for m in group.members for c in m.consumers}),
            generation=st.get(members[0]).generation,
        )
        retire_specs = [{**_retire_spec(s), "unit": members[0]} for s in group.members if s.name in retire]
        return unit, pending, {"ttls": ttls, "retire": retire_specs, "leases": leases}

    def _generate(self, spec: SecretPolicy, pending: Mapping[str, Secret]) -> generators.Generated:
        """A new value for ``spec``; derived ones from their sources' new (or current) values."""
        deps: dict[str, Secret] = {}
        publics: dict[str, str | None] = {}
        for dep in spec.depends:
            dep_spec = self.policy.secrets.get(dep)
            value = pending.get(dep) or (self.held.get(dep_spec.key) if dep_spec else None)
            if value is None:
                how = (
                    f"infratool secrets set {dep}" if dep_spec and dep_spec.needs_person else f"rotate {dep}"
                )
                raise SecretsError(f"{spec.name} is derived from {dep}, which has no value yet: {how}")
            deps[dep] = value
            publics[dep] = generators.public_part(dep_spec.generator, value) if dep_spec else None
        ctx = generators.GenContext(
            name=spec.name,
            previous=self.held.get(spec.key),
            deps=deps,
            dep_publics=publics,
            order=spec.depends,
            provided=self.provided.get(spec.name),
            cwd=self.policy.root,
        )
        return generators.generate(spec.generator, spec.params, ctx)


def _value_for(spec: SecretPolicy, consumer: Consumer, value: Secret) -> tuple[Secret, str | None]:
    public = generators.public_part(spec.generator, value) if spec.has_public else None
    if consumer.part == "public":
        return Secret(public or ""), public
    return value, public


def _stdin(
    spec: SecretPolicy, command: Command, payload: Secret, public: str | None, in_effect: Mapping
) -> Secret:
    """A command's stdin; for a derived secret ``{NAME}`` of a ``from:`` secret works too.

    So the consumer of a hash can verify with the password it was made from
    (log in to nginx with it). The values in effect are the ones being
    delivered: the new ones, or the current ones while rolling back.
    """
    text = command.stdin
    if spec.depends and any("{" + d + "}" in text for d in spec.depends):
        values = {d: in_effect[d] for d in spec.depends if d in in_effect}
        pattern = re.compile(r"\{(" + "|".join(re.escape(d) for d in values) + r")\}")
        parts = pattern.split(text)
        # Odd parts are dependency names; even parts are rendered as usual ({value}, {public}).
        out = b"".join(
            values[p].reveal_bytes() if i % 2 else render_template(p, payload, public).reveal_bytes()
            for i, p in enumerate(parts)
        )
        return _line(Secret(out))
    return _line(command.render_stdin(payload, public))


def _line(value: Secret) -> Secret:
    """Command stdin ends with a newline, so `read -r VAR` in a verify script gets the value."""
    raw = value.reveal_bytes()
    return value if raw.endswith(b"\n") else Secret(raw + b"\n")


def delivery_items(
    host: str, unit: str, spec: SecretPolicy, value: Secret, in_effect: Mapping[str, Secret]
) -> tuple[list[dict], list[dict]]:
    """What delivering and verifying ``value`` to ``spec``'s consumers on ``host`` sends, as args."""
    deliver, verify = [], []
    for consumer in spec.consumers:
        if consumer.host != host:
            continue
        payload, public = _value_for(spec, consumer, value)
        item: dict[str, Any] = {"unit": unit, "secret": spec.name, "reload": list(consumer.reload)}
        if consumer.file is not None:
            f = consumer.file
            item["file"] = {
                "path": f.path,
                "mode": f.mode,
                "owner": f.owner,
                "group": f.group,
                "content": payload,
            }
        if consumer.command is not None:
            item["command"] = {
                "run": consumer.command.run,
                "stdin": _stdin(spec, consumer.command, payload, public, in_effect),
            }
        deliver.append(item)
        if consumer.verify is not None:
            verify.append(
                {
                    "unit": unit,
                    "secret": spec.name,
                    "run": consumer.verify.run,
                    "stdin": _stdin(spec, consumer.verify, payload, public, in_effect),
                }
            )
    return deliver, verify


def describe(items: list[dict]) -> str:
    """One line per delivery, for the plan (never the content)."""
    lines = []
    for it in items:
        how = []
        if "file" in it:
            f = it["file"]
            how.append(f"file {f['path']} ({f['mode']:04o} {f['owner']}:{f['group']})")
        if "command" in it:
            how.append(f"stdin of `{it['command']['run']}`")
        reload = f"; reload: {'; '.join(it['reload'])}" if it["reload"] else ""
        lines.append(f"  {it['secret']}: {', '.join(how) or 'nothing'}{reload}")
    return "\n".join(lines)


def build(
    policy: Policy,
    file: str,
    secrets_dir: str,
    groups: list[Group],
    held: Mapping[str, Secret],
    provided: Mapping[str, Secret],
    st: state.RotationState,
    task: str,
    lock_wait: float | None,
) -> engine.Rotation:
    """The engine rotation of ``groups`` (all in sops file ``file``), with per-host changes."""
    planner = Planner(policy, held, provided)
    units, values, ttls, retire, leases = [], {}, {}, [], []
    for g in groups:
        unit, pending, facts = planner.unit(g, st)
        units.append(unit)
        values[unit.key] = pending
        ttls.update(facts["ttls"])
        retire += facts["retire"]
        leases += facts["leases"]
    current = current_values(held, policy.secrets)
    new_effect = {**current, **{n: v for p in values.values() for n, v in p.items()}}
    hosts = sorted({c.host for g in groups for m in g.members for c in m.consumers})
    deliver, verify, rollback = [], [], []
    for host in hosts:
        d_items, v_items, r_items = [], [], []
        for g, unit in zip(groups, units, strict=True):
            for spec in g.members:
                d, v = delivery_items(host, unit.key, spec, values[unit.key][spec.name], new_effect)
                d_items += d
                v_items += v
                old = held.get(spec.key)
                if any(c.host == host for c in spec.consumers):
                    if old is None:
                        r_items.append({"unit": unit.key, "secret": spec.name, "first": True})
                    else:
                        rd, rv = delivery_items(host, unit.key, spec, old, current)
                        r_items += [{**i, "verify": [x for x in rv if x["secret"] == spec.name]} for i in rd]
        if not d_items:
            continue
        unit_keys = sorted({i["unit"] for i in d_items})
        common = {"secrets_dir": secrets_dir, "units": unit_keys}
        names = ", ".join(dict.fromkeys(i["secret"] for i in d_items))
        deliver.append(
            Change(
                host,
                task,
                f"deliver {names}",
                op="rotation.secret.deliver",
                args={**common, "items": d_items},
                diff=describe(d_items),
                action="update",
            )
        )
        verify.append(
            Change(
                host,
                task,
                f"verify {names} on {host}" if v_items else f"record delivery of {names}",
                op="rotation.secret.verify",
                args={**common, "items": v_items},
                action="run",
            )
        )
        rollback.append(
            Change(
                host,
                task,
                f"if a check failed: put the current {names} back on {host}",
                op="rotation.secret.rollback",
                args={**common, "items": r_items},
                action="update",
            )
        )
    hooks = {
        "promoted": {
            "op": "rotation.secret.promoted",
            "args": {"secrets_dir": secrets_dir, "file": file, "ttls": ttls, "retire": retire},
        },
        "discarded": {
            "op": "rotation.secret.discarded",
            "args": {
                "secrets_dir": secrets_dir,
                "file": file,
                "leases": leases,
                "notify": _notify_args(policy.notify),
            },
        },
    }
    labels = ", ".join(f"{g.label} ({g.reason})" for g in groups)
    resumed = all(not u.pending for u in units)
    return engine.Rotation(
        kind=KIND,
        file=file,
        secrets_dir=secrets_dir,
        units=units,
        phases=[engine.Phase("deliver", deliver, checked=True), engine.Phase("verify", verify, checked=True)],
        rollback=[engine.Phase("rollback", rollback, checked=True)],
        task=task,
        lock_wait=lock_wait,
        hooks=hooks,
        description=f"{'resume' if resumed else 'rotate'} {labels}: store the new value(s) as pending",
    )


def _retire_spec(spec: SecretPolicy) -> dict[str, Any]:
    return {"name": spec.name, "key": spec.key, "generator": spec.generator, "params": dict(spec.params)}


def _notify_args(target: Notify | None) -> dict[str, Any] | None:
    if target is None:
        return None
    return {"command": target.command, "url": target.url, "events": list(target.events)}


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


@action("rotation.secret.deliver")
def deliver(ctx: Any, secrets_dir: str, units: list[str], items: list[dict]) -> None:
    """Deliver the new values to this host's consumers; record a failure per unit (never raise)."""
    for unit, problem in _send(ctx, items, "deliver").items():
        engine.record_check(secrets_dir, unit, ctx.name, problem)


@action("rotation.secret.verify")
def verify(ctx: Any, secrets_dir: str, units: list[str], items: list[dict]) -> None:
    """Run this host's verify commands with the new values; record each unit's outcome."""
    fault_point("delivered")
    failed = {u for u in units if engine.check_problem(secrets_dir, u, ctx.name)}
    problems = _verify(ctx, items, failed)
    for unit in units:
        engine.record_check(secrets_dir, unit, ctx.name, problems.get(unit))


@action("rotation.secret.rollback")
def rollback(ctx: Any, secrets_dir: str, units: list[str], items: list[dict]) -> None:
    """For the units settle marked: put the current values back here, reload, verify; record it."""
    back = set(engine.rolling_back(secrets_dir, units))
    if not back:
        return
    mine = [i for i in items if i["unit"] in back]
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
        if problem := _retire(spec, spec["pending_lease"]):
            _log.warning("could not revoke the unused new lease", secret=spec["name"], error=problem)
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
