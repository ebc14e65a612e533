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

The phase is written to the plaintext state file (``keys.STATE_FILE``) when
its predecessor is verified, so after a crash (even ``kill -9``) the next run
plans from that phase on. At every instant, every client trusts a key that
signs the whole cache: NEW is trusted everywhere before it signs anything,
and OLD is distrusted only after NEW has signed everything.

Every rotation change requires every participant (server, all clients and
the local repo): one failure anywhere stops the rotation where it is.

A rotation starts when the current key's generation is below ``generation``
or older than ``max_age``; otherwise the task only resumes one in progress,
so a converged playbook plans nothing. :func:`plan_rotation` is the entry
point for the secrets-rotation machinery.
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infratool import nixgen
from infratool.changes import LOCAL, Change, action
from infratool.context import HostContext, LocalContext
from infratool.errors import InputError, RefusedError, SecretsError, VerifyError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.nixssh import nix_ssh_env
from infratool.rotation.lock import rotation_lock
from infratool.rotation.policy import parse_duration
from infratool.rotation.state import format_time, parse_time, utcnow
from infratool.secrets import generators
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.binary_cache import scripts
from infratool.tasks.binary_cache.client import (
    BinaryCacheClient,
    check_client,
    check_repo_path,
    client_facts,
    plan_client,
    plan_flake,
)
from infratool.tasks.binary_cache.keys import (
    CURRENT,
    NEXT,
    PHASES,
    SOPS_FILE,
    STATE_FILE,
    CacheRecord,
    Keys,
    generation,
    key_name,
    load_keys,
    public_key,
    read_records,
    remember,
    state_path,
    update_record,
)
from infratool.tasks.binary_cache.server import key_file_changes, probe_info, server_facts
from infratool.tasks.binary_cache.spec import (
    CACHE_PARAMS,
    CacheSpec,
    cache_spec,
    validate_hosts,
    validate_server,
)
from infratool.tasks.nix_settings import generated_path, local_file_change

_HELD_LOCKS: dict[Path, contextlib.ExitStack] = {}


@dataclass(frozen=True)
class Rotation:
    """What one rotation plan works with."""

    spec: CacheSpec
    keys: Keys
    """With ``next`` set (generated at plan time for a new rotation)."""
    start: str | None
    """Phase the fleet is in now (None: the rotation has not started)."""
    clients: list[str]
    flake_config: str
    task: str

    @property
    def new(self) -> Secret:
        """The key being rotated in."""
        assert self.keys.next is not None
        return self.keys.next

    @property
    def participants(self) -> tuple[str, ...]:
        """Every host that must not fail for the rotation to go on (and the local repo)."""
        assert self.spec.server is not None
        return (LOCAL, self.spec.server.name, *self.clients)


def rotation_due(spec: CacheSpec, keys: Keys, want_generation: int | None, max_age: str | None) -> str | None:
    """Why the current key should be rotated now, or None."""
    name = key_name(keys.current)
    if want_generation is not None and generation(name, spec.name) < want_generation:
        return f"{name} is below generation {want_generation}"
    if max_age is not None and keys.record.created:
        age = utcnow() - parse_time(keys.record.created)
        if age > parse_duration(max_age):
            return f"{name} is older than {max_age}"
    return None


def plan_rotation(
    ctx: PlanContext,
    spec: CacheSpec,
    clients: list[str],
    task: str = "binary_cache.rotate_key",
    flake_config: str | None = None,
    force: bool = False,
    want_generation: int | None = None,
    max_age: str | None = None,
) -> list[Change]:
    """Every change of the cache key rotation from wherever it stands (nothing when not due).

    The secrets-rotation machinery calls this with ``force=True`` to rotate
    now; the task calls it with its ``generation`` / ``max_age`` triggers.
    ``ctx.hosts`` must hold the server and every client.
    """
    keys, changes = load_keys(ctx, spec, task)
    if changes:
        return changes  # no key yet: there is nothing to rotate
    flake_config = f"nix/binary-cache/{spec.name}.nix" if flake_config is None else flake_config
    if keys.next is None:
        if keys.record.phase == "retire" and keys.record.next == key_name(keys.current):
            return [_finish_state_change(ctx, spec, task)]  # died after the sops swap
        reason = "forced" if force else rotation_due(spec, keys, want_generation, max_age)
        if reason is None:
            return []
        made = generators.generate(
            "nix-cache-key", {"name": spec.key_name(generation(key_name(keys.current), spec.name) + 1)}
        )
        rot = Rotation(
            spec, Keys(keys.current, made.value, None, keys.record), None, clients, flake_config, task
        )
    else:
        rot = Rotation(spec, keys, keys.phase, clients, flake_config, task)
    _check_participants(ctx, rot)
    planned = _phases(ctx, rot)
    for c in planned:
        c.requires = tuple(dict.fromkeys((*c.requires, *rot.participants)))
    remember(ctx, spec, rot.keys.finished())
    return planned


def rotation_phase(secrets_dir: str | Path, name: str) -> str | None:
    """The phase of the rotation of cache ``name`` in progress (None: none), for status displays."""
    return read_records(Path(secrets_dir) / STATE_FILE).get(name, CacheRecord()).phase


def _check_participants(ctx: PlanContext, rot: Rotation) -> None:
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


def _phases(ctx: PlanContext, rot: Rotation) -> list[Change]:
    idx = -1 if rot.start is None else PHASES.index(rot.start)
    out: list[Change] = []
    phase = 10

    def add(changes: list[Change]) -> None:
        nonlocal phase
        for c in changes:
            c.phase = phase
        out.extend(changes)
        phase += 1

    add([_begin_change(ctx, rot)])
    server = ctx.hosts[rot.spec.server.name]  # type: ignore[union-attr]
    _probe, present, _ = probe_info(server, rot.spec)
    if not present:
        raise RefusedError(f"the cache {rot.spec.name} has no probe path yet: run binary_cache.server first")
    old, new = public_key(rot.keys.current), public_key(rot.new)
    if idx <= 0:  # trust-new: clients trust both keys
        keys = rot.keys.at("trust-new")
        add(_client_config(ctx, rot, keys))
        add(_deploys(ctx, rot))
        add(_verify_clients(ctx, rot, keys.trusted, []))
        add([_marker_change(ctx, rot, "resign")])
    if idx <= 1:  # resign: the new key signs, the cache is re-signed
        keys = rot.keys.at("resign")
        add(_server_key(ctx, rot, keys, server))
        add(_deploys(ctx, rot, [server.name]))
        add(
            [
                scripts.script_change(
                    server.name,
                    rot.task,
                    f"re-sign the cache with {key_name(rot.new)} and verify it with that key only",
                    scripts.resign(rot.spec, server.host, old, new),
                    "re-sign the cache",
                )
            ]
        )
        add([_marker_change(ctx, rot, "drop-old")])
    if idx <= 2:  # drop-old: clients trust only the new key
        keys = rot.keys.at("drop-old")
        add(_client_config(ctx, rot, keys, forget=True))
        add(_deploys(ctx, rot))
        add(_verify_clients(ctx, rot, keys.trusted, [old]))
        add([_marker_change(ctx, rot, "retire")])
    add([_retire_change(ctx, rot)])
    if server.host.is_nixos:  # the module names secret-key again, which now holds the new key
        add(_server_key(ctx, rot, rot.keys.finished(), server, CURRENT))
        add(_deploys(ctx, rot, [server.name]))
    return out


def _client_config(ctx: PlanContext, rot: Rotation, keys: Keys, forget: bool = False) -> list[Change]:
    changes: list[Change] = []
    for name in rot.clients:
        hctx = ctx.hosts[name]
        changes += plan_client(ctx, hctx, rot.spec, rot.spec.url, keys.trusted, rot.task)
        if forget and not hctx.host.is_nixos:
            changes.append(
                scripts.script_change(
                    name,
                    rot.task,
                    "forget cached narinfos (signatures from before the re-sign)",
                    scripts.forget_narinfo_cache(),
                    "forget narinfo cache",
                )
            )
    changes += plan_flake(ctx.local, rot.spec, rot.spec.url, keys.trusted, rot.flake_config, rot.task)
    for c in changes:
        c.deploy = None  # NixOS hosts are deployed inside the rotation, phase by phase
    return changes


def _server_key(
    ctx: PlanContext, rot: Rotation, keys: Keys, server: HostContext, which: str = NEXT
) -> list[Change]:
    """The server signs with ``keys.signer``: its key file (linux), or which sops key its module names (NixOS)."""
    if not server.host.is_nixos:
        return key_file_changes(server, rot.spec, keys.signer, rot.task) if which == NEXT else []
    # The module's other settings (hook, port) belong to binary_cache.server: only
    # the sops key it installs is switched here, in the module that task wrote.
    rel = generated_path(server.name, f"binary-cache-{rot.spec.name}-server")
    current = ctx.local.current(rel)
    if current is None:
        raise RefusedError(f"{rel} does not exist: run binary_cache.server first")
    other = CURRENT if which == NEXT else NEXT
    text = current.decode().replace(
        f"key = {nixgen.string(rot.spec.sops_key(other))};",
        f"key = {nixgen.string(rot.spec.sops_key(which))};",
    )
    return local_file_change(ctx.local, rot.task, rel, text, deploy=None)


def _deploys(ctx: PlanContext, rot: Rotation, names: list[str] | None = None) -> list[Change]:
    result = []
    for name in names if names is not None else rot.clients:
        host = ctx.hosts[name].host
        if host.is_nixos:
            argv = host.deploy_argv()
            target = {
                "name": host.name,
                "address": host.address,
                "port": host.port,
                "user": host.user,
                "ssh_key": None if host.ssh_key is None else str(host.ssh_key),
                "host_keys": list(host.host_keys),
            }
            result.append(
                Change(
                    LOCAL,
                    rot.task,
                    f"deploy {name}: {shlex.join(argv)}",
                    op="binary_cache.deploy",
                    args={"argv": argv, "target": target},
                    action="deploy",
                )
            )
    return result


@action("binary_cache.deploy")
def deploy(local: LocalContext, argv: list[str], target: dict[str, Any]) -> None:
    """Deploy one NixOS host between two phases of a rotation.

    Like the runner's deploys: ssh and ``nix copy`` get the inventory's port,
    key and pinned host key through ``NIX_SSHOPTS``, never ``~/.ssh/known_hosts``.
    """
    ssh_key = target["ssh_key"]
    host = Host(
        name=target["name"],
        address=target["address"],
        port=target["port"],
        user=target["user"],
        ssh_key=None if ssh_key is None else Path(ssh_key),
        os="nixos",
        host_keys=tuple(target["host_keys"]),
    )
    with nix_ssh_env(host) as env:
        local.run(argv, what=f"deploy {host.name}", env=env)


def _verify_clients(
    ctx: PlanContext, rot: Rotation, trusted: list[str], untrusted: list[str]
) -> list[Change]:
    system = rot.spec.server.system  # type: ignore[union-attr]
    names = ", ".join(k.split(":")[0] for k in trusted)
    args = {"cache": rot.spec.name, "url": rot.spec.url, "trusted": trusted, "untrusted": untrusted}
    return [
        Change(
            name,
            rot.task,
            f"verify: fetch a signed path from the cache trusting only {names}",
            op="binary_cache.verify_client",
            args={**args, "system": system},
            action="run",
        )
        for name in rot.clients
    ]


@action("binary_cache.verify_client")
def verify_client(
    hctx: HostContext, cache: str, url: str, trusted: list[str], untrusted: list[str], system: str
) -> None:
    """A real signed fetch from the cache trusting only ``trusted``; the settings read back."""
    spec = CacheSpec(name=cache, server=None, url=url)  # a client's check needs the name and URL only
    problem = check_client(hctx, spec, url, trusted, system, untrusted)
    if problem:
        raise VerifyError(f"{hctx.name}: {problem}")


def _hold_lock(store: SopsStore) -> None:
    """Hold the sops file's rotation lock until this process exits (kill -9 releases it)."""
    path = store.path(SOPS_FILE)
    if path in _HELD_LOCKS:
        return
    stack = contextlib.ExitStack()
    stack.enter_context(rotation_lock(path, wait=0))
    _HELD_LOCKS[path] = stack


def _begin_change(ctx: PlanContext, rot: Rotation) -> Change:
    if rot.start is None:
        desc = f"start key rotation: store the next signing key {key_name(rot.new)} in secrets/{SOPS_FILE}"
    else:
        desc = f"resume key rotation {key_name(rot.keys.current)} → {key_name(rot.new)} at phase {rot.start}"
    return Change(
        LOCAL,
        rot.task,
        desc,
        op="binary_cache.rotation_begin",
        args={
            "cache": rot.spec.name,
            "current": key_name(rot.keys.current),
            "new": rot.new,
            "start": rot.start,
            "planned_phase": rot.keys.record.phase,
        },
        action="create" if rot.start is None else "run",
        diff=f"+ next public key {public_key(rot.new)}",
    )


@action("binary_cache.rotation_begin")
def begin(
    local: LocalContext, cache: str, current: str, new: Secret, start: str | None, planned_phase: str | None
) -> None:
    """Take the rotation lock, refuse a stale plan, and store the next key (generated at plan time)."""
    store = SopsStore(local.root / "secrets")
    _hold_lock(store)
    sops_next = f"binary-cache/{cache}/{NEXT}"
    record = read_records(state_path(store)).get(cache, CacheRecord())
    stored_next = store.get(SOPS_FILE, sops_next)
    expected_next = new if start is not None else None
    if record.phase != planned_phase or stored_next != expected_next:
        raise SecretsError(f"the rotation of {cache} moved on since this plan was made; run again")
    if start is None:
        # Stored (encrypted) before any host hears of it: a crash cannot lose it.
        store.write(SOPS_FILE, {sops_next: new})
        update_record(state_path(store), cache, current=current, next=key_name(new), phase="trust-new")
    elif record.phase is None:
        # The run that stored the next key died before writing the marker.
        update_record(state_path(store), cache, current=current, next=key_name(new), phase=start)


def _marker_change(ctx: PlanContext, rot: Rotation, phase: str) -> Change:
    return Change(
        LOCAL,
        rot.task,
        f"key rotation of {rot.spec.name}: phase {phase} ({STATE_FILE})",
        op="binary_cache.rotation_marker",
        args={"cache": rot.spec.name, "phase": phase},
        action="update",
    )


@action("binary_cache.rotation_marker")
def marker(local: LocalContext, cache: str, phase: str) -> None:
    """Record that the rotation of ``cache`` reached ``phase`` (its predecessor verified)."""
    update_record(state_path(SopsStore(local.root / "secrets")), cache, phase=phase)


def _retire_change(ctx: PlanContext, rot: Rotation) -> Change:
    spec = rot.spec
    return Change(
        LOCAL,
        rot.task,
        f"retire {key_name(rot.keys.current)}: {key_name(rot.new)} becomes {spec.sops_key(CURRENT)}; "
        f"the old secret is deleted from secrets/{SOPS_FILE}",
        op="binary_cache.rotation_retire",
        args={"cache": spec.name, "new": rot.new},
        action="update",
    )


@action("binary_cache.rotation_retire")
def retire(local: LocalContext, cache: str, new: Secret) -> None:
    """The next key becomes the current one and the old one is gone, in one sops write."""
    store = SopsStore(local.root / "secrets")
    prefix = f"binary-cache/{cache}"
    store.write(SOPS_FILE, {f"{prefix}/{CURRENT}": new, f"{prefix}/{NEXT}": None})
    _finish_state(state_path(store), cache, key_name(new))


def _finish_state(path: Path, name: str, current: str) -> None:
    now = format_time(utcnow())
    update_record(path, name, current=current, next=None, phase=None, created=now, rotated=now)


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
    """Clear the phase of a rotation whose sops swap is done (the run died right after it)."""
    _finish_state(state_path(SopsStore(local.root / "secrets")), cache, current)


@register
class BinaryCacheRotateKey(Task):
    """Rotate the cache's signing key with overlap; resumes an interrupted rotation."""

    name = "binary_cache.rotate_key"
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

    def label(self) -> str:
        return f"{self.name} {self.spec.name}"

    def targets(self, selected: list[Host]) -> list[Host]:
        wanted = {self.args["server"], *self.args["clients"]}
        return [h for h in selected if h.name in wanted]

    def fact_requests(self, host: Host) -> list[FactRequest]:
        if host.name == self.args["server"]:
            return server_facts(self.spec, host)
        return client_facts(self.spec, host)

    def plan(self, ctx: PlanContext) -> list[Change]:
        keys, changes = load_keys(ctx, self.spec, self.name)
        if changes:
            return changes  # no key yet: nothing to rotate
        if self.args["server"] not in ctx.hosts:
            # Without the server there is no probe to check and no cache to re-sign.
            if keys.rotating or rotation_due(self.spec, keys, self.args["generation"], self.args["max_age"]):
                raise RefusedError(f"key rotation of {self.spec.name} needs its server {self.args['server']}")
            return []
        return plan_rotation(
            ctx,
            self.spec,
            list(self.args["clients"]),
            self.name,
            self.args["flake_config"],
            want_generation=self.args["generation"],
            max_age=self.args["max_age"],
        )
