"""The changes of each step of a cache-key rotation, and the actions they run.

:mod:`.rotate` orders these into the engine's phases: the clients' config
(trusting both keys, then only the new one), the server's signing key, the
NixOS deploys between phases, and each client's proof (a real signed fetch).
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infratool import nixgen
from infratool.changes import LOCAL, Change, action
from infratool.context import HostContext, LocalContext
from infratool.deploy import clear_pending, confirm_deploy, mark_pending
from infratool.deploy.engine import deploy_action
from infratool.errors import RefusedError, VerifyError
from infratool.inventory import Host
from infratool.nixssh import nix_ssh_env
from infratool.secrets.secret import Secret
from infratool.tasks.base import PlanContext
from infratool.tasks.binary_cache import scripts
from infratool.tasks.binary_cache.client import cache_args, cache_of, check_client, plan_client, plan_flake
from infratool.tasks.binary_cache.keys import CURRENT, NEXT, Keys, key_name
from infratool.tasks.binary_cache.server import key_file_changes
from infratool.tasks.binary_cache.spec import CacheSpec
from infratool.tasks.lib.local import generated_path, local_file_change


@dataclass(frozen=True)
class CacheRotation:
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


def client_config(ctx: PlanContext, rot: CacheRotation, keys: Keys, forget: bool = False) -> list[Change]:
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


def server_key(
    ctx: PlanContext, rot: CacheRotation, keys: Keys, server: HostContext, which: str = NEXT
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


def deploys(
    ctx: PlanContext,
    rot: CacheRotation,
    keys: Keys,
    names: list[str] | None = None,
    untrusted: list[str] | None = None,
) -> list[Change]:
    """Deploy the NixOS hosts among ``names`` (default: the clients) between two rotation steps.

    Through the deploy engine (:mod:`infratool.deploy`), each a change on its
    own host, in parallel: build, copy with the pinned key, activate under
    the watchdog, then, over a new connection, this step's own check (a
    client substitutes trusting ``keys.trusted``, and its live settings
    trust those and none of ``untrusted``; the server's
    installed key is ``keys.signer``) before the commit, else the host rolls
    back. A host with a ``deploy_command`` runs that instead (the escape
    hatch, on the controller, unchecked).
    """
    engine = [ctx.hosts[n].host for n in (names if names is not None else rot.clients)]
    engine = [h for h in engine if h.is_nixos]
    batch = {"id": uuid.uuid4().hex, "hosts": [h.name for h in engine if not h.deploy_command]}
    server = rot.spec.server
    result = []
    for host in engine:
        if host.deploy_command:
            result.append(_deploy_command(rot, host))
            continue
        if server is not None and host.name == server.name:
            check = {"server": True, "signer": key_name(keys.signer)}
        else:
            assert server is not None
            check = {"trusted": list(keys.trusted), "untrusted": untrusted or [], "system": server.system}
        result.append(
            Change(
                host.name,
                rot.task,
                f"deploy {host.name}: build, copy, activate, verify, commit",
                op="binary_cache.deploy_nixos",
                args={
                    "flake": str(Path(ctx.inventory.flake).resolve()),
                    "confirm_timeout": int(ctx.options.confirm_timeout),
                    "batch": batch,
                    "cache": cache_args(rot.spec),
                    "check": check,
                },
                action="deploy",
            )
        )
    return result


def _deploy_command(rot: CacheRotation, host: Host) -> Change:
    argv = host.deploy_argv()
    target = {
        "name": host.name,
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "ssh_key": None if host.ssh_key is None else str(host.ssh_key),
        "host_keys": list(host.host_keys),
    }
    return Change(
        LOCAL,
        rot.task,
        f"deploy {host.name}: {shlex.join(argv)}",
        op="binary_cache.deploy",
        args={"argv": argv, "target": target},
        action="deploy",
    )


@action("binary_cache.deploy")
def deploy(local: LocalContext, argv: list[str], target: dict[str, Any]) -> None:
    """The escape hatch: a NixOS host's ``deploy_command`` between two phases of a rotation.

    ssh and ``nix copy`` get the inventory's port, key and pinned host key
    through ``NIX_SSHOPTS``, never ``~/.ssh/known_hosts``.
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


@action("binary_cache.deploy_nixos")
def deploy_nixos(
    hctx: Any,
    flake: str,
    confirm_timeout: int,
    batch: dict[str, Any],
    cache: dict[str, Any],
    check: dict[str, Any],
) -> None:
    """One rotation deploy through the engine: activate, this step's check over a new connection, commit.

    The host is marked pending in the flake repo until it commits, so a
    deploy that rolled back is owed by the next run even outside the rotation.
    """
    host: Host = hctx.host
    spec = cache_of(cache, host if check.get("server") else None)

    def checks(remote: Any) -> list[str]:
        fresh = HostContext(host=host, facts=hctx.facts, remote=remote)
        if check.get("server"):
            problem = installed_signer(fresh, spec, check["signer"])
        else:
            problem = check_client(
                fresh, spec, spec.url, check["trusted"], check["system"], check.get("untrusted") or []
            )
        return [problem] if problem else []

    mark_pending(Path(flake), {host.name})
    deploy_action(hctx, flake, confirm_timeout=confirm_timeout, batch=batch)
    confirm_deploy(host, checks, confirm_timeout)
    clear_pending(Path(flake), host.name)


def installed_signer(hctx: HostContext, spec: CacheSpec, signer: str) -> str | None:
    """Whether the key sops-nix installed on a NixOS server is ``signer`` (by its public key's name)."""
    key = spec.key_file(hctx.host)
    res = hctx.run(
        f"{scripts.NIX} key convert-secret-to-public < {scripts.q(key)} | cut -d: -f1",
        check=False,
        what="name the installed signing key",
    )
    name = res.stdout.strip()
    if not res.ok or name != signer:
        return f"the installed signing key at {key} is {name or 'unreadable'}, not {signer}"
    return None


def verify_clients(
    ctx: PlanContext, rot: CacheRotation, trusted: list[str], untrusted: list[str]
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
