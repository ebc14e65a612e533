"""Planning the ``secret`` kind: values made now, the per-host changes that carry them.

See :mod:`infratool.rotation.secret` for the protocol and the actions. This
module turns the groups the secret task decided to rotate (all in one sops
file) into one engine :class:`~infratool.rotation.engine.Rotation`: new
values generated at plan time, and for each consumer host a deliver, a
verify and a rollback change whose args hold the exact bytes they send.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from infratool.changes import LOCAL, Change
from infratool.deploy.engine import DEFAULT_CONFIRM_TIMEOUT
from infratool.errors import InfratoolError, SecretsError
from infratool.rotation import engine, secret_nixos_plan, state
from infratool.rotation.policy import Command, Consumer, Notify, Policy, SecretPolicy, render_template
from infratool.rotation.secret import (
    KIND,
    Group,
    current_values,
    lease_key,
    pending_key,
    pending_lease_key,
    previous_key,
    retire_key,
    return_leases,
    state_key,
)
from infratool.secrets import generators
from infratool.secrets.secret import Secret


class Planner:
    """Builds the engine rotation of one sops file's groups (values made now, at plan time)."""

    def __init__(self, policy: Policy, held: Mapping[str, Secret], provided: Mapping[str, Secret]) -> None:
        self.policy = policy
        self.held = dict(held)
        """The sops file's values as planned on (decrypted once)."""
        self.provided = provided
        self.issued: list[dict[str, Any]] = []
        """Leases issued while planning (``pending_lease`` each): returned if the plan is never applied."""

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
                    self.issued.append({**_retire_spec(spec), "pending_lease": made.lease.id})
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
    issued: list[dict[str, Any]] | None = None,
    nixos: Collection[str] = (),
    flake: str = "",
    confirm_base: int = DEFAULT_CONFIRM_TIMEOUT,
) -> engine.Rotation:
    """The engine rotation of ``groups`` (all in sops file ``file``), with per-host changes.

    ``issued`` collects the leases (Vault) issued to plan it: the caller
    returns them if the plan is not applied (a dry run, a "no").
    ``nixos``: the ``os: nixos`` hosts; their consumers get the value through
    sops-nix and a deploy of ``flake`` (:mod:`.secret_nixos`, :mod:`.secret_nixos_plan`), whose watchdogs
    wait ``confirm_base`` seconds plus what the plan's verify phase needs.
    """
    raw_held = held
    held = secret_nixos_plan.effective_held(held, [m for g in groups for m in g.members])
    planner = Planner(policy, held, provided)
    units, values, ttls, retire, leases = [], {}, {}, [], []
    try:
        for g in groups:
            unit, pending, facts = planner.unit(g, st)
            units.append(unit)
            values[unit.key] = pending
            ttls.update(facts["ttls"])
            retire += facts["retire"]
            leases += facts["leases"]
    except InfratoolError:
        return_leases(planner.issued)  # nothing was stored: what was issued goes back
        raise
    if issued is not None:
        issued += planner.issued
    current = current_values(held, policy.secrets)
    new_effect = {**current, **{n: v for p in values.values() for n, v in p.items()}}
    hosts = sorted({c.host for g in groups for m in g.members for c in m.consumers})
    deliver, verify, rollback = [], [], []
    nix_hosts: list[dict[str, Any]] = []
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
        if host in nixos:
            nix_hosts.append(secret_nixos_plan.host_entry(host, unit_keys, d_items, v_items, r_items))
            verify.append(_verify_change(host, task, names, common, v_items))
            continue
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
        verify.append(_verify_change(host, task, names, common, v_items))
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
    phases = [engine.Phase("deliver", deliver, checked=True), engine.Phase("verify", verify, checked=True)]
    rollbacks = [engine.Phase("rollback", rollback, checked=True)]
    if nix_hosts:
        phases, rollbacks = secret_nixos_plan.attach(
            phases, rollbacks, verify, policy=policy, flake=flake, file=file, secrets_dir=secrets_dir,
            task=task, target=f"{LOCAL}:{KIND}/{Path(file).name}", hosts=nix_hosts, units=units,
            members={u.key: g.members for g, u in zip(groups, units, strict=True)},
            new=values, raw_held=raw_held, held=held, confirm_base=confirm_base,
        )  # fmt: skip
    return engine.Rotation(
        kind=KIND,
        file=file,
        secrets_dir=secrets_dir,
        units=units,
        phases=phases,
        rollback=rollbacks,
        task=task,
        lock_wait=lock_wait,
        hooks=hooks,
        description=f"{'resume' if resumed else 'rotate'} {labels}: store the new value(s) as pending",
    )


def _verify_change(host: str, task: str, names: str, common: dict[str, Any], items: list[dict]) -> Change:
    return Change(
        host,
        task,
        f"verify {names} on {host}" if items else f"record delivery of {names}",
        op="rotation.secret.verify",
        args={**common, "items": items},
        action="run",
    )


def _retire_spec(spec: SecretPolicy) -> dict[str, Any]:
    return {"name": spec.name, "key": spec.key, "generator": spec.generator, "params": dict(spec.params)}


def _notify_args(target: Notify | None) -> dict[str, Any] | None:
    if target is None:
        return None
    return {"command": target.command, "url": target.url, "events": list(target.events)}


def check_current(
    host: Any,
    spec: SecretPolicy,
    consumer: Consumer,
    values: Mapping[str, Secret],
    specs: Mapping[str, SecretPolicy],
) -> str | None:
    """One consumer's verify with the **current** value of ``values`` (drift check); rotates nothing.

    The same command and the same stdin as a rotation's verify (``{NAME}`` of
    a ``from:`` secret is its current value too). ``"HOST: problem"``, or ``None``.
    """
    if consumer.verify is None:
        return None
    payload, public = _value_for(spec, consumer, values[spec.key])
    stdin = _stdin(spec, consumer.verify, payload, public, current_values(values, specs))
    res = host.run(consumer.verify.run, stdin=stdin, check=False, what=f"verify {spec.name}")
    if res.ok:
        return None
    detail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.exited}"
    return f"{consumer.host}: {detail}"
