"""The ``remote_builders.setup`` and ``remote_builders.check`` tasks.

``setup`` spans hosts in ordered phases (one playbook entry):

====== ============ ==========================================================
phase  where        what
====== ============ ==========================================================
0      local        store each new client key in ``secrets/remote-builders.yaml``
1      builders     ``trusted-users``; authorize the clients' keys (restricted to
                    the Nix daemon); a rotated client's old key stays for now
2      clients      private key (0600), root's known_hosts, ``/etc/nix/machines``,
                    ``builders``/``builders-use-substitutes`` in nix.conf
3      builders     revoke rotated clients' old keys
====== ============ ==========================================================

NixOS hosts get generated modules in the flake repo instead (and a deploy).
Keys are generated while planning, in memory only, so the plan shows the
exact public key that will be authorized; they are stored in sops (phase 0)
before anything uses them, and a crash after that leaves a stored key the next
run installs.
"""

from __future__ import annotations

import shlex
from typing import Any

from infratool.changes import LOCAL, Change
from infratool.context import HostContext
from infratool.errors import HostError, InputError, SecretsFileError, VerifyError
from infratool.facts import FACTS, FactRequest
from infratool.hidden import REDACTOR
from infratool.inventory import Host
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.files import file_changes
from infratool.tasks.nix_settings import edit_conf, generated_path, local_file_change
from infratool.tasks.remote_builders import render, spec
from infratool.tasks.remote_builders.keys import ClientKey, new_key, store_key, stored_key
from infratool.tasks.remote_builders.render import CLIENT_KNOWN_HOSTS, MACHINES, NIX_CONF
from infratool.tasks.remote_builders.spec import Builder, Topology
from infratool.tasks.remote_builders.verify import check_client, check_clients

PHASE_STORE, PHASE_BUILDER, PHASE_CLIENT, PHASE_REVOKE = 0, 1, 2, 3
# Nix splits this file on ';' before it strips comments: none may appear here.
MACHINES_HEADER = (
    "# Remote builders for this host's Nix. Lines ending in '# infratool:remote-builders:<builder>'\n"
    "# are managed by infratool (playbooks/remote-builders.yaml). Other lines are kept as they are."
)


def _home_command(user: str) -> str:
    return f"getent passwd {shlex.quote(user)} | cut -d: -f6"


def _tag(changes: list[Change], why: str, phase: int, requires: tuple[str, ...] = ()) -> list[Change]:
    """Give file changes their reason, phase and prerequisites."""
    for change in changes:
        change.description = REDACTOR.redact(f"{change.description}: {why}")
        change.phase = phase
        change.requires = requires
    return changes


class _TopologyTask(Task):
    """Shared by setup and check: the parameters, their validation and the hosts spanned."""

    params = spec.SHARED_PARAMS

    def validate(self) -> None:
        self.topology: Topology = spec.parse(self.args, self.source, self.inventory)

    def targets(self, selected: list[Host]) -> list[Host]:
        """Selected builders and clients; a selected client brings its builders along.

        A client is useless without its key on the builders, so ``--limit slax``
        also touches the builders (for slax's key, and to verify).
        """
        topo = self.topology
        names = {h.name for h in selected}
        chosen = topo.names & names
        if any(c.name in names for c in topo.clients):
            chosen |= {b.name for b in topo.builders}
        return [h for h in self.inventory if h.name in chosen]

    def require_pinned_builders(self) -> None:
        """Refuse to plan while a builder has no pinned host key (checked at plan time).

        Not at load time: the fleet inventory may list hosts not pinned yet,
        and the playbook must still validate. Clients must never learn a
        builder's key on first use, so nothing is planned until it is pinned.
        """
        for builder in self.topology.builders:
            if not builder.host.host_keys:
                raise InputError(
                    f"builder {builder.name!r} has no pinned host key: clients must never learn it "
                    "on first use; pin it first (`infratool host add`)",
                    file=self.inventory.path,
                    line=builder.host.line,
                )

    def label(self) -> str:
        topo = self.topology
        return f"{self.name} {','.join(b.name for b in topo.builders)} ← {len(topo.clients)} client(s)"

    def fact_requests(self, host: Host) -> list[FactRequest]:
        if host.is_nixos:
            return []
        topo = self.topology
        builder = next((b for b in topo.builders if b.name == host.name), None)
        if builder is not None:
            reqs = [FactRequest("file", NIX_CONF)]
            if builder.user == "root":
                reqs.append(FactRequest("file", "/root/.ssh/authorized_keys"))
            else:
                reqs.append(FactRequest("stdout", _home_command(builder.user)))
            return reqs
        return [
            FactRequest("file_meta", topo.key_path),  # the private key's content never travels
            FactRequest("file", CLIENT_KNOWN_HOSTS),
            FactRequest("file", MACHINES),
            FactRequest("file", NIX_CONF),
        ]

    def _pairs(
        self, ctx: PlanContext, clients: list[Host]
    ) -> tuple[list[tuple[HostContext, Host]], list[tuple[Builder, HostContext | None]]]:
        hosts = ctx.hosts
        return (
            [(hosts[c.name], c) for c in clients if c.name in hosts],
            [(b, hosts[b.name]) for b in self.topology.builders if b.name in hosts],
        )


@register
class Setup(_TopologyTask):
    """Per-client builder keys, restricted authorized_keys, machines lines; verified by a real build."""

    name = "remote_builders.setup"
    summary = "Nix remote builders: per-client keys in sops, restricted builder logins, /etc/nix/machines"
    params = {
        **spec.SHARED_PARAMS,
        "rotate_keys": Param(
            (bool, list),
            default=False,
            help="true (every client) or a list of clients: generate new keys this run, revoke the old",
        ),
        "verify": Param(bool, default=True, help="after changes, ping and build on every builder"),
    }

    def validate(self) -> None:
        super().validate()
        rotate = self.args["rotate_keys"]
        clients = [c.name for c in self.topology.clients]
        if isinstance(rotate, list):
            for i, name in enumerate(rotate):
                if name not in clients:
                    raise self.source.error(
                        f"rotate_keys: {name!r} is not a client of this task", "rotate_keys", i
                    )
            self.rotating = set(rotate)
        else:
            self.rotating = set(clients) if rotate else set()
        # Keys generated by this task instance: plan and apply share them.
        self._fresh: dict[str, ClientKey] = {}

    # -- plan ---------------------------------------------------------------------

    def plan(self, ctx: PlanContext) -> list[Change]:
        self.require_pinned_builders()
        topo = self.topology
        store = ctx.secrets()
        keys, store_changes = self._keys(store)
        if store_changes and not store.config.is_file():
            # Found now, not half-way through applying: new keys need recipients.
            raise SecretsFileError(
                f"no {store.config} to encrypt new builder keys to: run `infratool init` first",
                file=store.config,
            )
        installed = {c.name: self._installed(ctx, c, keys[c.name]) for c in topo.clients}
        publics = {name: key.public for name, key in keys.items()}
        fresh = (LOCAL,) if store_changes else ()
        changes: list[Change] = []
        # Builders before clients in the list too: the runner deploys NixOS
        # hosts in the order their changes appear.
        for builder in topo.builders:
            if builder.host.is_nixos:
                rel = generated_path(builder.name, render.MODULE_BUILDER)
                module = render.builder_module(topo, builder, publics)
                changes += _tag(
                    local_file_change(ctx.local, self.name, rel, module, deploy=builder.name),
                    f"builder {builder.name}: authorized client keys, trusted-users",
                    PHASE_BUILDER,
                    fresh,
                )
            elif builder.name in ctx.hosts:
                changes += self._plan_builder(ctx.hosts[builder.name], builder, keys, installed, fresh)
        for client in topo.clients:
            key = keys[client.name]
            requires = tuple(b.name for b in topo.builders) + ((LOCAL,) if key.fresh else ())
            if client.is_nixos:
                rel = generated_path(client.name, render.MODULE_CLIENT)
                changes += _tag(
                    local_file_change(
                        ctx.local, self.name, rel, render.client_module(topo, client), client.name
                    ),
                    f"client {client.name}: nix.buildMachines, pinned builder host keys, key secret",
                    PHASE_CLIENT,
                    requires,
                )
            elif client.name in ctx.hosts:
                changes += self._plan_client(ctx.hosts[client.name], key, requires)
        return changes + store_changes

    def _keys(self, store: SopsStore) -> tuple[dict[str, ClientKey], list[Change]]:
        """Every client's key (stored, or new for this run) and the changes storing the new ones."""
        values = store.read(spec.SECRETS_FILE, missing_ok=True)
        keys: dict[str, ClientKey] = {}
        changes: list[Change] = []
        shown = f"secrets/{store.display(spec.SECRETS_FILE)}"
        for client in self.topology.clients:
            current = stored_key(store, client.name, values)
            if current is not None and client.name not in self.rotating:
                keys[client.name] = current
                continue
            key = self._fresh.get(client.name) or new_key(client.name)
            self._fresh[client.name] = keys[client.name] = key
            verb = "rotate" if current is not None else "generate"
            changes.append(
                Change(
                    LOCAL,
                    self.name,
                    f"{verb} builder key of {client.name} ({render.key_blob(key.public)}) "
                    f"and store it in {shown} as {spec.secret_key(client.name)}",
                    apply=lambda _ctx, key=key: store_key(store, key),
                    diff=f"{'---' if current else '+++'} {shown}\n(secret content: not shown)",
                    phase=PHASE_STORE,
                    # NixOS clients get the key through sops-nix: a new value needs a deploy.
                    deploy=client.name if client.is_nixos else None,
                    action="update" if current is not None else "create",
                )
            )
        return keys, changes

    def _installed(self, ctx: PlanContext, client: Host, key: ClientKey) -> bool | None:
        """Whether ``client`` already has ``key`` (None: cannot tell — NixOS or unreachable)."""
        cctx = ctx.hosts.get(client.name)
        if client.is_nixos or cctx is None:
            return None
        state = cctx.file(self.topology.key_path)
        return state.exists and state.sha256 == key.sha256

    def _authorized_keys(self, bctx: HostContext, builder: Builder) -> str:
        """Path of the login user's authorized_keys on a builder (its state made known to ``bctx``)."""
        if builder.user == "root":
            return "/root/.ssh/authorized_keys"
        home = bctx.facts.get("stdout", _home_command(builder.user))
        if not home or not home.strip():
            raise HostError(
                builder.name, f"builder login user {builder.user!r} does not exist; create it first"
            )
        path = f"{home.strip()}/.ssh/authorized_keys"
        request = FactRequest("file", path)
        if bctx.facts.missing([request]):
            # Known only now that the home directory is: read it like a fact (read-only).
            res = bctx.run(FACTS["file"].command(path), check=False, what=f"read {path}")
            bctx.facts.update({request: FACTS["file"].parse(res.stdout, res.exited)})
        return path

    def _plan_builder(
        self,
        bctx: HostContext,
        builder: Builder,
        keys: dict[str, ClientKey],
        installed: dict[str, bool | None],
        fresh: tuple[str, ...],
    ) -> list[Change]:
        topo = self.topology
        changes: list[Change] = []
        conf = bctx.file(NIX_CONF)
        text = (conf.text or "") if conf.exists else ""
        trusted = render.trusted_users_needed(text, builder.user)
        if trusted is not None:
            new = edit_conf(text, {"trusted-users": trusted})
            changes += _tag(
                file_changes(
                    bctx, self.name, NIX_CONF, new.encode(), None if conf.exists else 0o644, None, None
                ),
                f"make {builder.user} a trusted Nix user",
                PHASE_BUILDER,
            )
            if bctx.facts.get("systemd"):
                # nix-daemon reads trusted-users when it starts.
                changes.append(
                    Change(
                        builder.name,
                        self.name,
                        "restart nix-daemon (trusted-users changed)",
                        lambda h: h.run(
                            "systemctl try-restart nix-daemon.service", what="restart nix-daemon"
                        ),
                        phase=PHASE_BUILDER,
                        action="run",
                    )
                )
        path = self._authorized_keys(bctx, builder)
        state = bctx.file(path)
        if state.exists and state.content is None:
            raise HostError(builder.name, f"{path} is not a readable regular file of sane size")
        current = (state.text or "") if state.exists else ""
        old = render.managed_lines(current)
        desired = [render.authorized_line(topo.protocol, keys[c.name].public, c.name) for c in topo.clients]
        # A rotated client keeps its old key (listed right after the new one)
        # until it has the new one (phase 2); phase 3 revokes it.
        step_lines: list[str] = []
        keep: list[str] = []
        for c, line in zip(topo.clients, desired, strict=True):
            step_lines.append(line)
            if installed[c.name] is not True:
                new_blob = render.key_blob(keys[c.name].public)
                stale = [k for k in old.get(c.name, []) if render.line_key(k) != new_blob]
                keep += stale
                step_lines += stale
        mode, owner = 0o600, builder.user
        step = render.replace_managed(current, step_lines)
        final = render.replace_managed(current, desired)
        clients = {c.name for c in topo.clients}
        added = [
            c.name for c, line in zip(topo.clients, desired, strict=True) if line not in old.get(c.name, [])
        ]
        removed = sorted(set(old) - clients)
        if step != current:
            why = []
            if added:
                why.append(
                    f"authorize builder key of {', '.join(added)} ({render.REMOTE_COMMAND[topo.protocol]} only)"
                )
            if removed:
                why.append(f"revoke key of removed client {', '.join(removed)}")
            changes += _tag(
                file_changes(bctx, self.name, path, step.encode(), mode, owner, None),
                "; ".join(why) or "restore managed builder keys",
                PHASE_BUILDER,
                fresh,
            )
        if final != step:
            rotated = sorted({render.owner_of(line) or "" for line in keep})
            changes += _tag(
                file_changes(bctx, self.name, path, final.encode(), mode, owner, None),
                f"revoke old builder key of {', '.join(rotated)}",
                PHASE_REVOKE,
                fresh,
            )
        return changes

    def _plan_client(self, cctx: HostContext, key: ClientKey, requires: tuple[str, ...]) -> list[Change]:
        topo = self.topology
        changes = _tag(
            file_changes(cctx, self.name, topo.key_path, key.private, 0o600, "root", None, secret=True),
            f"builder key of {cctx.name}",
            PHASE_CLIENT,
            requires,
        )
        pinned = [line for b in topo.builders for line in render.known_hosts_lines(b)]
        machines = [render.machines_line(topo, b, topo.key_path) for b in topo.builders]
        for path, lines, header, why in (
            (CLIENT_KNOWN_HOSTS, pinned, "", "pin builder host keys (no trust on first use)"),
            (MACHINES, machines, MACHINES_HEADER, "build machines"),
        ):
            state = cctx.file(path)
            text = (state.text or "") if state.exists else header
            new = render.replace_managed(text, lines)
            if not state.exists or new != text:
                changes += _tag(
                    file_changes(
                        cctx, self.name, path, new.encode(), None if state.exists else 0o644, None, None
                    ),
                    why,
                    PHASE_CLIENT,
                    requires,
                )
        conf = cctx.file(NIX_CONF)
        text = (conf.text or "") if conf.exists else ""
        new = edit_conf(text, {"builders": f"@{MACHINES}", "builders-use-substitutes": True})
        if new != text:
            changes += _tag(
                file_changes(
                    cctx, self.name, NIX_CONF, new.encode(), None if conf.exists else 0o644, None, None
                ),
                "use the build machines",
                PHASE_CLIENT,
                requires,
            )
        return changes

    # -- verify -------------------------------------------------------------------

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        """Ping and build from every ``os: linux`` client on every ``os: linux`` builder.

        NixOS hosts change only when their deploy runs, after this entry:
        check them with ``remote_builders.check`` after the deploy.
        """
        if not self.args["verify"]:
            return {}
        clients, builders = self._pairs(ctx, [c for c in self.topology.clients if not c.is_nixos])
        builders = [(b, bctx) for b, bctx in builders if not b.host.is_nixos]
        return check_clients(clients, builders, self.topology)


@register
class Check(_TopologyTask):
    """Prove every client builds on every builder (a ping and a real build), changing nothing else."""

    name = "remote_builders.check"
    summary = "nix store ping + a --max-jobs 0 build from each client on each builder"

    def fact_requests(self, host: Host) -> list[FactRequest]:
        return []  # a check reads nothing up front: it asks the hosts themselves

    def plan(self, ctx: PlanContext) -> list[Change]:
        self.require_pinned_builders()
        topo = self.topology
        clients, builders = self._pairs(ctx, list(topo.clients))
        names = ", ".join(b.name for b, _ in builders)
        changes = []
        for _cctx, client in clients:
            changes.append(
                Change(
                    client.name,
                    self.name,
                    f"check: nix store ping and a --max-jobs 0 build on {names}",
                    apply=lambda hctx, client=client: self._check(hctx, client, builders),
                    requires=tuple(b.name for b, _ in builders),
                    action="run",
                )
            )
        return changes

    def _check(self, cctx: HostContext, client: Host, builders: list[tuple[Builder, Any]]) -> None:
        problems = check_client(cctx, client, builders, self.topology)
        if problems:
            raise VerifyError(f"{client.name}: " + "; ".join(problems))
