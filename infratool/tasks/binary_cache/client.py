"""``binary_cache.client``: hosts (and the flake) substitute from the cache and trust its key.

* ``os: linux`` clients get ``/etc/nix/binary-cache-<name>.conf`` with
  ``extra-substituters`` / ``extra-trusted-public-keys`` and one
  ``!include`` line in nix.conf: the fragment is wholly ours, so a rotation
  can rewrite it without touching other caches' entries; ``extra-`` keeps
  cache.nixos.org and friends.
* ``os: nixos`` clients get ``hosts/<host>/generated/binary-cache-<name>.nix``
  (``nix.settings.substituters`` / ``trusted-public-keys``; lists merge with
  the NixOS defaults) and the host's deploy step.
* The flake repo gets ``nix/binary-cache/<name>.nix`` (generated, owned), and,
  where flake.nix has the marker lines, the same settings in its ``nixConfig``
  (Nix only accepts a literal there: see :func:`render.flake_config_file`).

The public keys come from the signing key in sops, never from a parameter,
except for external caches (Cachix, Attic, ...) where only the public key is
known: then ``url`` and ``public_keys`` are given and ``server`` is not.

Each client whose settings change gets a **check**
(``binary_cache.client_check``) after its changes: it substitutes the cache's
probe path into a throw-away store over HTTP, trusting only the cache's keys,
and (``os: linux``) reads the effective nix settings back. A check is counted
as a check, never as changed, and shows "substituted /nix/store/… from URL"
under verified; a converged client plans none.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from infratool.changes import LOCAL, Change, action
from infratool.context import HostContext, LocalContext
from infratool.errors import VerifyError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.binary_cache import filetext as render
from infratool.tasks.binary_cache import scripts
from infratool.tasks.binary_cache.install import file_changes
from infratool.tasks.binary_cache.keys import load_keys
from infratool.tasks.binary_cache.server import include_changes
from infratool.tasks.binary_cache.spec import (
    CACHE_PARAMS,
    NIX_CONF,
    CacheSpec,
    cache_spec,
    check_public_key,
    validate_hosts,
    validate_server,
)
from infratool.tasks.lib.local import generated_path, local_file_change

FLAKE_NIX = "flake.nix"


def check_repo_path(value: str) -> str | None:
    """Param check: a relative path inside the flake repo ending in ``.nix`` ('' disables)."""
    if value == "":
        return None
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or not value.endswith(".nix"):
        return f"must be a relative path inside the flake repo ending in .nix, got {value!r}"
    return None


def client_facts(spec: CacheSpec, host: Host) -> list[FactRequest]:
    """Facts a client plan reads."""
    if host.is_nixos:
        return []
    return [FactRequest("file", spec.client_conf), FactRequest("file", NIX_CONF)]


def plan_client(
    ctx: PlanContext, hctx: HostContext, spec: CacheSpec, url: str, trusted: list[str], task: str
) -> list[Change]:
    """Changes making one client substitute from ``url`` and trust exactly ``trusted`` for it."""
    host = hctx.host
    if host.is_nixos:
        rel = generated_path(host.name, f"binary-cache-{spec.name}")
        return local_file_change(
            ctx.local, task, rel, render.nixos_client_module(spec, url, trusted), deploy=host.name
        )
    changes = file_changes(
        hctx, task, spec.client_conf, render.client_conf(spec, url, trusted).encode(), 0o644, None, None
    )
    changes += include_changes(hctx, spec.client_conf, task)
    if changes and hctx.facts.get("systemd"):
        # A running nix-daemon read nix.conf when it started.
        changes.append(
            Change(
                host.name,
                task,
                "restart nix-daemon (if running) to load the new settings",
                op="command.run",
                args={"cmd": "systemctl try-restart nix-daemon.service"},
                action="run",
            )
        )
    return changes


def plan_flake(
    local: LocalContext, spec: CacheSpec, url: str, trusted: list[str], rel: str, task: str
) -> list[Change]:
    """The generated nixConfig file, and flake.nix's marked block when it has one."""
    if not rel:
        return []
    changes = local_file_change(local, task, rel, render.flake_config_file(spec, url, trusted), deploy=None)
    current = local.current(FLAKE_NIX)
    if current is not None:
        edited = render.edit_flake(current.decode(), spec.name, render.flake_block(url, trusted))
        if edited is not None:
            changes += local_file_change(local, task, FLAKE_NIX, edited, deploy=None)
    return changes


def check_client(
    hctx: HostContext,
    spec: CacheSpec,
    url: str,
    trusted: list[str],
    system: str | None,
    untrusted: tuple[str, ...] | list[str] = (),
    live_config: bool = True,
) -> str | None:
    """Prove a client works with the cache: a real signed fetch, then its effective settings.

    ``system``: the server's system, to name the probe path (None: no fetch,
    e.g. an external cache). ``untrusted``: keys the client must no longer
    trust. ``live_config``: read back ``nix show-config`` (not on NixOS before
    a deploy). Returns the problem, None when it works.
    """
    return probe_client(hctx, spec, url, trusted, system, untrusted, live_config)[0]


def probe_client(
    hctx: HostContext,
    spec: CacheSpec,
    url: str,
    trusted: list[str],
    system: str | None,
    untrusted: tuple[str, ...] | list[str] = (),
    live_config: bool = True,
) -> tuple[str | None, list[str]]:
    """:func:`check_client`, returning ``(problem, proofs)``: what it proved ("substituted … from URL")."""
    proofs: list[str] = []
    if system is not None:
        script = scripts.probe_path(spec, system) + "\n" + scripts.fetch_check(url, trusted, '"$p"')
        res = hctx.run(script + '\necho "$p"', check=False, what="fetch the probe path")
        if not res.ok:
            lines = [ln.strip() for ln in res.stderr.splitlines() if "sign" in ln or "error" in ln]
            return f"could not fetch a signed path from {url}: {'; '.join(lines[-3:]) or res.exited}", []
        fetched = res.stdout.strip().splitlines()
        proofs.append(f"substituted {fetched[-1] if fetched else 'the probe path'} from {url}")
    if not live_config:
        return None, proofs
    res = hctx.run(scripts.show_config(), check=False, what="nix show-config")
    if not res.ok:
        return "nix show-config failed", []
    problem = _settings_problem(res.stdout, url, trusted, untrusted)
    if problem:
        return problem, []
    return None, [*proofs, f"nix settings use {url} and trust its keys"]


def _settings_problem(
    show_config: str, url: str, trusted: list[str], untrusted: tuple[str, ...] | list[str]
) -> str | None:
    """Why ``nix show-config --json`` output does not use ``url`` with exactly these keys (None: it does)."""
    config = json.loads(show_config)
    subs = _words(config.get("substituters", {}).get("value"))
    keys = _words(config.get("trusted-public-keys", {}).get("value"))
    if url not in subs:
        return f"nix settings do not list {url} in substituters"
    missing = [k for k in trusted if k not in keys]
    if missing:
        return f"nix settings do not trust {', '.join(k.split(':')[0] for k in missing)}"
    stale = [k for k in untrusted if k in keys]
    if stale:
        return f"nix settings still trust {', '.join(k.split(':')[0] for k in stale)}"
    return None


def _words(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value or "").split()


@register
class BinaryCacheClient(Task):
    """Make hosts (and the flake) use the binary cache, trusting only its keys."""

    name = "binary_cache.client"
    summary = (
        "substituters and trusted-public-keys on clients (nix.conf / nix.settings) and the flake nixConfig"
    )
    params = {
        **CACHE_PARAMS,
        "server": Param(str, help="inventory host serving the cache (omit for an external cache)"),
        "clients": Param(list, required=True, items=str, help="inventory hosts that use the cache"),
        "public_keys": Param(list, items=str, help="external caches only (no server): their public keys"),
        "flake_config": Param(
            str,
            help="generated nixConfig file in the flake repo (default nix/binary-cache/<name>.nix; '' = none)",
            check=check_repo_path,
        ),
    }

    def validate(self) -> None:
        validate_server(self)
        validate_hosts(self, "clients")
        args = self.args
        if args["server"] is not None and args["public_keys"]:
            raise self.source.error(
                f"{self.name}: 'public_keys' is only for external caches; a served cache's key is "
                "derived from its signing key in sops",
                "public_keys",
            )
        if args["server"] is None:
            missing = [k for k in ("url", "public_keys", "name") if not args[k]]
            if missing:
                raise self.source.error(
                    f"{self.name}: give 'server', or {', '.join(repr(m) for m in missing)} for an external cache"
                )
            for i, key in enumerate(args["public_keys"]):
                problem = check_public_key(key)
                if problem:
                    raise self.source.error(f"{self.name}: public_keys[{i}]: {problem}", "public_keys", i)
        if args["flake_config"] is None:
            args["flake_config"] = f"nix/binary-cache/{args['name']}.nix"
        self.spec = cache_spec(self)

    def label(self) -> str:
        return f"{self.name} {self.spec.name}"

    def targets(self, selected: list[Host]) -> list[Host]:
        wanted = set(self.args["clients"])
        return [h for h in selected if h.name in wanted]

    def fact_requests(self, host: Host) -> list[FactRequest]:
        return client_facts(self.spec, host)

    def trusted(self, ctx: PlanContext) -> tuple[list[str], list[Change]]:
        """The public keys clients trust now, and the change storing a new key if there was none."""
        if self.spec.server is None:
            return list(self.args["public_keys"]), []
        keys, changes = load_keys(ctx, self.spec, self.name)
        return keys.trusted, changes

    def plan(self, ctx: PlanContext) -> list[Change]:
        trusted, changes = self.trusted(ctx)
        url = self.spec.url
        for hctx in ctx.hosts.values():
            for c in plan_client(ctx, hctx, self.spec, url, trusted, self.name):
                c.phase, c.requires = 1, (*c.requires, LOCAL)
                changes.append(c)
        changes += plan_flake(ctx.local, self.spec, url, trusted, self.args["flake_config"], self.name)
        # A client whose settings this entry changes gets a check; a converged
        # client none. (The keys it trusts are in the check's args, and a
        # rotation later in the run changes them: a check planned on every
        # run would then never find its last passing record.)
        changed = {c.host for c in changes} | {c.deploy for c in changes if c.deploy}
        return changes + self._checks(ctx, trusted, changed)

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        """NixOS clients, after their deploy (the runner calls this in the confirm, over a new connection).

        A signed fetch of the probe path from the cache, trusting only its
        keys, and the new system's effective settings (``nix show-config``):
        the cache listed, its keys trusted. While the server's own deploy
        has not published the probe yet this fails, and the deploy engine
        retries it within the confirm window; a cache that never serves
        correctly rolls the client back. ``os: linux`` clients have their
        check change instead (``binary_cache.client_check``).
        """
        nixos = [h for h in ctx.hosts.values() if h.name in changed and h.host.is_nixos]
        if not nixos or not ctx.options.deploy:
            return {}
        trusted, _ = self.trusted(ctx)
        server = self.spec.server
        system = server.system if server is not None else None
        problems: dict[str, str] = {}
        for hctx in nixos:
            problem, proofs = probe_client(hctx, self.spec, self.spec.url, trusted, system)
            if problem:
                problems[hctx.name] = problem
            for proof in proofs:
                ctx.prove(hctx.name, proof)
        return problems

    def _checks(self, ctx: PlanContext, trusted: list[str], changed: set[str]) -> list[Change]:
        """One check per changed client, after its changes: a signed fetch of the probe path, its settings.

        It requires the server (whose cache serves the probe) and the repo
        (a NixOS client's settings): it is skipped if either failed.
        """
        server = self.spec.server
        system = server.system if server is not None else None
        requires = (LOCAL, *((server.name,) if server is not None else ()))
        checks = []
        for hctx in ctx.hosts.values():
            if hctx.name not in changed:
                continue
            if hctx.host.is_nixos:
                # Its settings arrive with its deploy: verify() checks it after
                # the deploy, inside the confirm window, so a client that cannot
                # substitute rolls back instead of committing.
                continue
            what = (
                f"substitute the probe path from {self.spec.url}, trusting only its keys"
                if system is not None
                else f"nix settings use {self.spec.url} and trust its keys"
            )
            check = ctx.check(
                hctx.name,
                self.name,
                f"check: {what}",
                op="binary_cache.client_check",
                args={
                    "cache": cache_args(self.spec),
                    "trusted": list(trusted),
                    "system": system,
                },
                name=f"{self.name} {self.spec.name}",
                requires=requires,
            )
            check.phase = 2
            checks.append(check)
        return checks


def cache_args(spec: CacheSpec) -> dict[str, Any]:
    """A cache as plain data for a change's args (the serving host is the change's own, or none)."""
    return {"name": spec.name, "url": spec.url, "port": spec.port, "store_dir": spec.store_dir}


def cache_of(data: dict[str, Any], server: Host | None = None) -> CacheSpec:
    """The :class:`CacheSpec` of :func:`cache_args` data (``server``: the host it runs on, if the server)."""
    return CacheSpec(
        name=data["name"], server=server, url=data["url"], port=data["port"], store_dir=data["store_dir"]
    )


@action("binary_cache.client_check")
def client_check(
    hctx: HostContext,
    cache: dict[str, Any],
    trusted: list[str],
    system: str | None,
    untrusted: list[str] | None = None,
) -> list[str]:
    """Prove this client substitutes from the cache trusting only its keys; returns the proofs.

    ``untrusted``: keys it must no longer trust (a key rotation's retired
    key). NixOS clients get their settings at deploy, after this check: fetch only.
    """
    spec = cache_of(cache)
    problem, proofs = probe_client(hctx, spec, spec.url, trusted, system, untrusted or ())
    if problem:
        raise VerifyError(problem)
    return proofs
