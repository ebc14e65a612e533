"""``binary_cache.rotate_key``: replace the cache's signing key without a moment of distrust.

The overlap pattern (REFERENCE.md; NixOS RFC 149's discussion), one phase at a
time, each verified before the next starts::

    (idle)     clients trust OLD; OLD signs
    trust-new  store NEW in sops (next-secret-key) → clients trust OLD and NEW
               → verify every client (real signed fetch, settings read back)
    resign     the server signs with NEW → every path OLD vouches for is
               re-signed with NEW → verify the cache with NEW only
    drop-old   clients trust only NEW → verify every client with NEW only
    retire     sops: secret-key ← NEW, next-secret-key deleted (OLD is gone)

It runs on the one rotation engine (:mod:`infratool.rotation.engine`, kind
``cache-key``): *begin* takes the sops file's rotation lock and stores NEW
(generated while planning, shown in the plan) as pending; each phase is
split where another host must act first (config → NixOS deploys → verify),
and each step is marked in the one state file (entry ``cache-key/<cache>``)
when done on every participant, so after a crash (even ``kill -9``) the
next run plans from the step after the last mark; *promote* is the retire
write. At every instant, every client trusts a key that signs the whole
cache: NEW is trusted everywhere before it signs anything, and OLD is
distrusted only after NEW has signed everything.

Every rotation change requires every participant (server, all clients and
the local repo): one failure anywhere stops the rotation where it is.

A rotation starts when the current key's generation is below ``generation``
or older than ``max_age``, or when ``secrets rotate cache-key/<cache>`` asks
(:mod:`.kind`); otherwise the task only resumes one in progress, so a
converged playbook plans nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infratool.changes import LOCAL, Change, action
from infratool.context import LocalContext
from infratool.errors import InputError, RefusedError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.rotation import state
from infratool.rotation.engine import Phase, Rotation, Unit, plan_changes
from infratool.rotation.policy import parse_duration
from infratool.secrets import generators
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.binary_cache import rotate_steps as steps
from infratool.tasks.binary_cache import scripts
from infratool.tasks.binary_cache.client import (
    BinaryCacheClient,
    check_repo_path,
    client_facts,
)
from infratool.tasks.binary_cache.keys import (
    CURRENT,
    KIND,
    NEXT,
    SOPS_FILE,
    Keys,
    generation,
    key_name,
    load_keys,
    public_key,
    record_key,
    remember,
)
from infratool.tasks.binary_cache.server import probe_info, server_facts
from infratool.tasks.binary_cache.spec import (
    CACHE_PARAMS,
    CacheSpec,
    cache_spec,
    validate_hosts,
    validate_server,
)


def rotation_due(spec: CacheSpec, keys: Keys, want_generation: int | None, max_age: str | None) -> str | None:
    """Why the current key should be rotated now, or None."""
    name = key_name(keys.current)
    if want_generation is not None and generation(name, spec.name) < want_generation:
        return f"{name} is below generation {want_generation}"
    age = keys.progress.entry.age()
    if max_age is not None and age is not None and age > parse_duration(max_age):
        return f"{name} is older than {max_age}"
    return None


def _plan(
    ctx: PlanContext,
    spec: CacheSpec,
    clients: list[str],
    task: str,
    flake_config: str,
    force: bool = False,
    want_generation: int | None = None,
    max_age: str | None = None,
    lock_wait: float | None = 0,
) -> list[Change]:
    """Every change of the cache key rotation from wherever it stands (nothing when not due).

    ``force``: rotate now (``secrets rotate cache-key/NAME``); otherwise the
    task's ``generation`` / ``max_age`` triggers decide. ``ctx.hosts`` must
    hold the server and every client.
    """
    keys, changes = load_keys(ctx, spec, task)
    if changes:
        return changes  # no key yet: there is nothing to rotate
    where = keys.progress
    if keys.next is None:
        legacy_swapped = where.entry.phase == "retire" and where.entry.extra.get("next") == key_name(
            keys.current
        )
        if where.promoting or legacy_swapped:
            return [_finish_state_change(ctx, spec, task)]  # died right after the sops swap
        reason = "forced" if force else rotation_due(spec, keys, want_generation, max_age)
        if reason is None:
            return []
        made = generators.generate(
            "nix-cache-key", {"name": spec.key_name(generation(key_name(keys.current), spec.name) + 1)}
        )
        rot = steps.CacheRotation(
            spec, Keys(keys.current, made.value, None, where), None, clients, flake_config, task
        )
    else:
        rot = steps.CacheRotation(spec, keys, keys.phase, clients, flake_config, task)
    _check_participants(ctx, rot)
    planned = _phases(ctx, rot, lock_wait)
    remember(ctx, spec, rot.keys.finished())
    return planned


def _check_participants(ctx: PlanContext, rot: steps.CacheRotation) -> None:
    missing = [h for h in rot.participants[1:] if h not in ctx.hosts]
    if missing:
        raise RefusedError(
            f"key rotation of {rot.spec.name} needs every participant selected and reachable; "
            f"missing: {', '.join(missing)}"
        )
    nixos = [h for h in rot.participants[1:] if ctx.hosts[h].host.is_nixos]
    if nixos and not ctx.options.deploy:
        raise RefusedError(
            f"key rotation deploys NixOS hosts between phases ({', '.join(nixos)}); run it without --no-deploy"
        )


def _phases(ctx: PlanContext, rot: steps.CacheRotation, lock_wait: float | None) -> list[Change]:
    """The rotation on the one engine: begin, the phases (each step marked), promote, finish.

    Each logical phase is split where another host must act first: the
    config, then the NixOS deploys (only when there are NixOS hosts), then the
    verification. Every step is marked in the state file when it is done on
    every participant, so a run killed anywhere resumes after the last mark.
    """
    spec = rot.spec
    server = ctx.hosts[spec.server.name]  # type: ignore[union-attr]
    _probe, present, _ = probe_info(server, spec)
    if not present:
        raise RefusedError(f"the cache {spec.name} has no probe path yet: run binary_cache.server first")
    old, new = public_key(rot.keys.current), public_key(rot.new)
    planned: list[Phase] = []

    def step(name: str, changes: list[Change], optional: bool = False) -> None:
        if changes or not optional:
            planned.append(Phase(name, changes))

    keys = rot.keys.at("trust-new")  # clients trust both keys
    step("trust-new:config", steps.client_config(ctx, rot, keys))
    step("trust-new:deploy", steps.deploys(ctx, rot, keys), optional=True)
    step("trust-new", steps.verify_clients(ctx, rot, keys.trusted, []))
    keys = rot.keys.at("resign")  # the new key signs, the cache is re-signed
    step("resign:key", steps.server_key(ctx, rot, keys, server))
    step("resign:deploy", steps.deploys(ctx, rot, keys, [server.name]), optional=True)
    resign = scripts.script_change(
        server.name,
        rot.task,
        f"re-sign the cache with {key_name(rot.new)} and verify it with that key only",
        scripts.resign(spec, server.host, old, new),
        "re-sign the cache",
    )
    step("resign", [resign])
    keys = rot.keys.at("drop-old")  # clients trust only the new key
    step("drop-old:config", steps.client_config(ctx, rot, keys, forget=True))
    step("drop-old:deploy", steps.deploys(ctx, rot, keys, untrusted=[old]), optional=True)
    step("drop-old", steps.verify_clients(ctx, rot, keys.trusted, [old]))
    for p in planned:
        for c in p.changes:
            c.requires = tuple(dict.fromkeys((*c.requires, *rot.participants)))
    secrets_dir = str(ctx.secrets().repo)
    unit = Unit(
        key=state.key(KIND, spec.name),
        label=f"signing key of {spec.name}",
        pending={} if rot.start is not None else {spec.sops_key(NEXT): rot.new},
        # Begin refuses the plan unless sops still holds what it saw.
        expect={
            spec.sops_key(CURRENT): rot.keys.current,
            spec.sops_key(NEXT): rot.new if rot.start is not None else None,
        },
        promote={spec.sops_key(CURRENT): rot.new, spec.sops_key(NEXT): None},
        discard={spec.sops_key(NEXT): None},
        generation=rot.keys.progress.entry.generation,
    )
    if rot.start is None:
        desc = f"start key rotation: store the next signing key {key_name(rot.new)} in secrets/{SOPS_FILE}"
    else:
        desc = f"resume key rotation {key_name(rot.keys.current)} → {key_name(rot.new)} at phase {rot.start}"
    engine_rotation = Rotation(
        kind=KIND,
        file=SOPS_FILE,
        secrets_dir=secrets_dir,
        units=[unit],
        phases=planned,
        task=rot.task,
        lock_wait=lock_wait,
        hooks={
            "promoted": {
                "op": "binary_cache.key_promoted",
                "args": {"file": SOPS_FILE, "secrets_dir": secrets_dir},
            }
        },
        resume_after=rot.keys.progress.marker,
        description=desc,
    )
    out = plan_changes(engine_rotation, first_phase=10)
    out[0].diff = f"+ next public key {new}"  # the key the plan shows is the key stored
    if server.host.is_nixos:  # the module names secret-key again, which now holds the new key
        last = max(c.phase for c in out)
        after = (engine_rotation.target, *rot.participants)
        for n, changes in enumerate(
            (
                steps.server_key(ctx, rot, rot.keys.finished(), server, CURRENT),
                steps.deploys(ctx, rot, rot.keys.finished(), [server.name]),
            )
        ):
            for c in changes:
                c.phase, c.requires = last + 1 + n, tuple(dict.fromkeys((*c.requires, *after)))
            out += changes
    return out


@action("binary_cache.key_promoted")
def key_promoted(ctx: Any, file: str, secrets_dir: str, keys: list[str]) -> None:
    """Engine hook after the promote write: name the cache's new current key in its state entry."""
    values = SopsStore(Path(secrets_dir)).read(file, missing_ok=True)
    with state.locked(state.state_path(secrets_dir)) as records:
        for full in keys:
            cache = full.split("/", 1)[1]
            current = values.get(f"binary-cache/{cache}/{CURRENT}")
            records.get(full).extra = {"current": key_name(current) if current is not None else None}


def _finish_state_change(ctx: PlanContext, spec: CacheSpec, task: str) -> Change:
    keys, _ = load_keys(ctx, spec, task)
    current = key_name(keys.current)
    return Change(
        LOCAL,
        task,
        f"finish the key rotation of {spec.name}: {current} is the current key",
        op="binary_cache.rotation_finish",
        args={"cache": spec.name, "current": current},
        action="update",
    )


@action("binary_cache.rotation_finish")
def finish(local: LocalContext, cache: str, current: str) -> None:
    """Record the promotion of a rotation whose sops swap is done (the run died right after it)."""
    record_key(
        SopsStore(local.root / "secrets").repo, cache, current, "rotated (recorded after an interrupted run)"
    )


@register
class BinaryCacheRotateKey(Task):
    """Rotate the cache's signing key with overlap; resumes an interrupted rotation."""

    name = "binary_cache.rotate_key"
    rotates = True
    summary = "signing key rotation: trust new → re-sign → drop old → retire, each phase verified"
    params = {
        **CACHE_PARAMS,
        "clients": Param(list, required=True, items=str, help="every host that trusts the cache"),
        "flake_config": BinaryCacheClient.params["flake_config"],
        "generation": Param(
            int,
            help="rotate until the key's generation is at least this (bump to rotate)",
            check=lambda v: None if v >= 1 else "must be 1 or more",
        ),
        "max_age": Param(str, help="rotate when the key is older than this, e.g. 180d"),
    }

    def validate(self) -> None:
        validate_server(self)
        validate_hosts(self, "clients")
        if self.args["server"] in self.args["clients"]:
            raise self.source.error(f"{self.name}: the server is not one of its own clients", "clients")
        if self.args["max_age"] is not None:
            try:
                parse_duration(self.args["max_age"])
            except InputError as exc:
                raise self.source.error(f"{self.name}: max_age: {exc.message}", "max_age") from None
        problem = check_repo_path(self.args["flake_config"] or "")
        if problem:
            raise self.source.error(f"{self.name}: flake_config {problem}", "flake_config")
        self.spec = cache_spec(self)
        rel = self.args["flake_config"]
        self.flake_config = f"nix/binary-cache/{self.spec.name}.nix" if rel is None else rel

    def label(self) -> str:
        return f"{self.name} {self.spec.name}"

    def targets(self, selected: list[Host]) -> list[Host]:
        wanted = {self.args["server"], *self.args["clients"]}
        return [h for h in selected if h.name in wanted]

    def fact_requests(self, host: Host) -> list[FactRequest]:
        if host.name == self.args["server"]:
            return server_facts(self.spec, host)
        return client_facts(self.spec, host)

    def force_rotation(self, lock_wait: float | None) -> None:
        """Rotate now whatever the triggers say (``secrets rotate cache-key/NAME``)."""
        self.forced, self.lock_wait = True, lock_wait

    def plan(self, ctx: PlanContext) -> list[Change]:
        keys, changes = load_keys(ctx, self.spec, self.name)
        if changes:
            return changes  # no key yet: nothing to rotate
        forced = getattr(self, "forced", False)
        if self.args["server"] not in ctx.hosts:
            # Without the server there is no probe to check and no cache to re-sign.
            due = rotation_due(self.spec, keys, self.args["generation"], self.args["max_age"])
            if forced or keys.rotating or due:
                raise RefusedError(f"key rotation of {self.spec.name} needs its server {self.args['server']}")
            return []
        return _plan(
            ctx,
            self.spec,
            list(self.args["clients"]),
            self.name,
            self.flake_config,
            force=forced,
            want_generation=self.args["generation"],
            max_age=self.args["max_age"],
            lock_wait=getattr(self, "lock_wait", 0),
        )
