"""The ``remote_builders.setup`` task.

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
Keys are generated while planning and carried in the storing change's
parameters (a :class:`~infratool.secrets.secret.Secret`, sealed with sops in a
saved plan), so the public key the plan shows is the one authorized and
installed, even when the plan is applied later by another process. They are
stored in sops (phase 0) before anything uses them, and a crash after that
leaves a stored key the next run installs.
"""

from __future__ import annotations

import shlex

from infratool.changes import LOCAL, Change
from infratool.context import HostContext
from infratool.errors import HostError, InputError, SecretsFileError
from infratool.facts import FACTS, FactRequest
from infratool.inventory import Host
from infratool.rotation import state
from infratool.rotation.engine import Unit
from infratool.rotation.policy import parse_duration
from infratool.rotation.state import SecretState
from infratool.secrets.secret import REDACTOR
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, register
from infratool.tasks.files import file_changes
from infratool.tasks.nix_settings import edit_conf, generated_path, local_file_change
from infratool.tasks.remote_builders import filetext as render
from infratool.tasks.remote_builders import rotation, spec
from infratool.tasks.remote_builders.common import DAEMON_RUNNING, TopologyTask, home_command, script_change
from infratool.tasks.remote_builders.filetext import CLIENT_KNOWN_HOSTS, MACHINES, NIX_CONF, SSH_CONFIG
from infratool.tasks.remote_builders.keys import KIND, ClientKey, new_key, stored_key
from infratool.tasks.remote_builders.spec import Builder
from infratool.tasks.remote_builders.verify import check_clients

PHASE_STORE, PHASE_BUILDER, PHASE_CLIENT, PHASE_REVOKE = 0, 1, 2, 3
USER_HOME_ROOT = "/var/lib"
"""Where a login user infratool creates on a builder gets its home."""
KNOWN_HOSTS_HEADER = (
    "# Builder host keys pinned by infratool (playbooks/remote-builders.yaml); rewritten on each run."
)
# Nix splits this file on ';' before it strips comments: none may appear here.
MACHINES_HEADER = (
    "# Remote builders for this host's Nix. Lines ending in '# infratool:remote-builders:<builder>'\n"
    "# are managed by infratool (playbooks/remote-builders.yaml). Other lines are kept as they are."
)


def _tag(changes: list[Change], why: str, phase: int, requires: tuple[str, ...] = ()) -> list[Change]:
    """Give file changes their reason, phase and prerequisites."""
    for change in changes:
        change.description = REDACTOR.redact(f"{change.description}: {why}")
        change.phase = phase
        change.requires = requires
    return changes


def _restart_daemon(
    hctx: HostContext, task: str, setting: str, phase: int, requires: tuple[str, ...]
) -> list[Change]:
    """A nix-daemon restart after a nix.conf change, on hosts run by systemd.

    The daemon reads nix.conf only when it starts, and it is the daemon that
    trusts users and dispatches builds for non-root users. ``try-restart``
    leaves a stopped daemon stopped. Without systemd (the lab), root's Nix
    opens the store itself and reads nix.conf on every command.
    """
    if not hctx.facts.get("systemd"):
        return []
    return [
        script_change(
            hctx.name,
            task,
            f"restart nix-daemon ({setting} changed)",
            "systemctl try-restart nix-daemon.service",
            "restart nix-daemon",
            phase,
            requires,
        )
    ]


@register
class Setup(TopologyTask):
    """Per-client builder keys, restricted authorized_keys, machines lines; verified by a real build."""

    name = "remote_builders.setup"
    summary = "Nix remote builders: per-client keys in sops, restricted builder logins, /etc/nix/machines"
    params = {
        **spec.SHARED_PARAMS,
        "rotate_keys": Param(
            (bool, list),
            default=False,
            help="true (every client) or a list of clients whose keys rotate when older than max_age",
        ),
        "max_age": Param(
            str,
            default=rotation.DEFAULT_MAX_AGE,
            help="age at which rotate_keys (and `secrets rotate --due`) replace a client's key",
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
            self.by_policy = set(rotate)
        else:
            self.by_policy = set(clients) if rotate else set()
        try:
            self.max_age = parse_duration(self.args["max_age"])
        except InputError as exc:
            raise self.source.error(f"max_age: {exc.message}", "max_age") from None
        self.requested: set[str] = set()
        self.requested_when_due = False
        self.lock_wait: float | None = 0
        # Keys generated by this task instance: a second plan shows the same keys.
        self._fresh: dict[str, ClientKey] = {}

    def request_rotation(self, clients: list[str], when_due: bool, lock_wait: float | None) -> None:
        """Rotate ``clients``' keys this run (``secrets rotate``); ``when_due``: only those due."""
        self.requested = set(clients)
        self.requested_when_due = when_due
        self.lock_wait = lock_wait

    def _why_rotate(self, client: str, entry: SecretState) -> str | None:
        if client in self.requested and not self.requested_when_due:
            return "rotation requested"
        if client in self.requested or client in self.by_policy:
            return rotation.due_reason(entry, self.max_age, self.args["max_age"])
        return None

    # -- plan ---------------------------------------------------------------------

    def plan(self, ctx: PlanContext) -> list[Change]:
        self.require_pinned_builders()
        topo = self.topology
        store = ctx.secrets()
        keys, store_changes, units = self._keys(store)
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
        if not units:
            return changes + store_changes
        by_phase = [[c for c in changes if c.phase == p] for p in (PHASE_BUILDER, PHASE_CLIENT, PHASE_REVOKE)]
        rotated = {u.key.split("/", 1)[1] for u in units}
        nixos = [c.name for c in topo.clients if c.is_nixos and c.name in rotated]
        return store_changes + rotation.phased(
            self.name, str(store.repo), units, keys, by_phase, nixos, self.lock_wait
        )

    def _keys(self, store: SopsStore) -> tuple[dict[str, ClientKey], list[Change], list[Unit]]:
        """Every client's key for this run, the changes storing first keys, and the rotations.

        A client with a pending key in sops is in the middle of a rotation:
        it is resumed with that key. A client whose key is due (or asked
        for) gets a new key, generated now, which the rotation stores.
        """
        values = store.read(spec.SECRETS_FILE, missing_ok=True)
        records = state.load_dir(store.repo)
        keys: dict[str, ClientKey] = {}
        changes: list[Change] = []
        units: list[Unit] = []
        shown = f"secrets/{store.display(spec.SECRETS_FILE)}"
        for client in self.topology.clients:
            current = stored_key(store, client.name, values)
            pending = stored_key(store, client.name, values, pending=True)
            entry = records.rotations.get(state.key(KIND, client.name)) or SecretState()
            if current is not None and pending is not None:
                keys[client.name] = pending
                units.append(rotation.unit(pending, current, True, entry))
                continue
            if current is not None and not self._why_rotate(client.name, entry):
                keys[client.name] = current
                continue
            key = self._fresh.get(client.name) or new_key(client.name)
            self._fresh[client.name] = keys[client.name] = key
            if current is not None:
                units.append(rotation.unit(key, current, False, entry))
                continue
            changes.append(
                Change(
                    LOCAL,
                    self.name,
                    f"generate builder key of {client.name} ({render.key_blob(key.public)}) "
                    f"and store it in {shown} as {spec.secret_key(client.name)}",
                    op="remote_builders.store_key",
                    args={"client": client.name, "private": key.private},
                    diff=f"+++ {shown}\n(secret content: not shown)",
                    phase=PHASE_STORE,
                    # NixOS clients get the key through sops-nix: a new value needs a deploy.
                    deploy=client.name if client.is_nixos else None,
                    action="create",
                )
            )
        return keys, changes, units

    def _installed(self, ctx: PlanContext, client: Host, key: ClientKey) -> bool | None:
        """Whether ``client`` already has ``key`` (None: cannot tell — NixOS or unreachable)."""
        cctx = ctx.hosts.get(client.name)
        if client.is_nixos or cctx is None:
            return None
        state = cctx.file(self.topology.key_path)
        return state.exists and state.sha256 == key.sha256

    def _home(self, bctx: HostContext, builder: Builder) -> tuple[str, bool]:
        """The login user's home on a builder, and whether the user exists yet."""
        home = bctx.facts.get("stdout", home_command(builder.user))
        if home and home.strip():
            return home.strip(), True
        return f"{USER_HOME_ROOT}/{builder.user}", False

    def _user_changes(self, bctx: HostContext, builder: Builder, path: str) -> list[Change]:
        """Create the dedicated login user (and its ~/.ssh) unless both are there already."""
        home, exists = self._home(bctx, builder)
        if exists and bctx.file(path).exists:
            return []
        user = shlex.quote(builder.user)
        # '*' is no password at all (sshd refuses a locked '!' account without PAM);
        # a shell only so sshd can run the forced command. Another run (or host
        # sharing /etc/passwd) may have created the user meanwhile: that is fine.
        script = "\n".join(
            [
                "set -e",
                f"if ! getent passwd {user} >/dev/null; then",
                f"  useradd --system --user-group --home-dir {shlex.quote(home)} --shell /bin/sh "
                f"--password '*' {user} || getent passwd {user} >/dev/null",
                "fi",
                f"mkdir -p {shlex.quote(home + '/.ssh')}",
                f"chown {user}: {shlex.quote(home)} {shlex.quote(home + '/.ssh')}",
                f"chmod 0755 {shlex.quote(home)}",
                f"chmod 0700 {shlex.quote(home + '/.ssh')}",
            ]
        )
        what = "create" if not exists else "prepare ~/.ssh of"
        change = script_change(
            bctx.name,
            self.name,
            f"{what} the builder login user {builder.user} (unprivileged; clients' keys run only the "
            "Nix daemon as this user)",
            script,
            f"create user {builder.user}",
            PHASE_BUILDER,
        )
        change.action = "create"
        return [change]

    def _daemon_changes(self, bctx: HostContext, builder: Builder) -> list[Change]:
        """Make sure a nix-daemon runs: the unprivileged login reaches the store only through it."""
        if bctx.facts.get("succeeds", DAEMON_RUNNING):
            return []
        if not bctx.facts.get("systemd"):
            raise HostError(
                builder.name,
                "no nix-daemon listens on /nix/var/nix/daemon-socket/socket: the builder login "
                f"{builder.user!r} is not root and reaches the Nix store only through the daemon; start it",
            )
        return [
            script_change(
                bctx.name,
                self.name,
                "start nix-daemon (the builder login user reaches the store through it)",
                "systemctl enable --now nix-daemon.socket || systemctl enable --now nix-daemon.service",
                "start nix-daemon",
                PHASE_BUILDER,
            )
        ]

    def _authorized_keys(self, bctx: HostContext, builder: Builder) -> str:
        """Path of the login user's authorized_keys on a builder (its state made known to ``bctx``)."""
        home, _ = self._home(bctx, builder)
        path = f"{home}/.ssh/authorized_keys"
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
            changes += _restart_daemon(bctx, self.name, "trusted-users", PHASE_BUILDER, ())
        path = self._authorized_keys(bctx, builder)
        changes = self._user_changes(bctx, builder, path) + self._daemon_changes(bctx, builder) + changes
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
        pinned_text = "".join(f"{line}\n" for line in [KNOWN_HOSTS_HEADER, *pinned])
        changes += _tag(
            file_changes(cctx, self.name, topo.known_hosts_path, pinned_text.encode(), 0o644, "root", None),
            "pin builder host keys under their aliases (no trust on first use)",
            PHASE_CLIENT,
            requires,
        )
        config = cctx.file(SSH_CONFIG)
        text = (config.text or "") if config.exists else ""
        block = render.ssh_config_block(topo, topo.key_path, topo.known_hosts_path)
        new = render.replace_ssh_block(text, block)
        if new != text:
            changes += _tag(
                file_changes(
                    cctx, self.name, SSH_CONFIG, new.encode(), None if config.exists else 0o600, None, None
                ),
                "ssh aliases for the builders (address, port, key, pinned host key)",
                PHASE_CLIENT,
                requires,
            )
        old_pins = cctx.file(CLIENT_KNOWN_HOSTS)
        if old_pins.exists and render.managed_lines(old_pins.text or ""):
            # Earlier versions pinned builders in root's own known_hosts.
            changes += _tag(
                file_changes(
                    cctx,
                    self.name,
                    CLIENT_KNOWN_HOSTS,
                    render.replace_managed(old_pins.text or "", []).encode(),
                    None,
                    None,
                    None,
                ),
                "drop builder pins from root's known_hosts (now in their own file)",
                PHASE_CLIENT,
                requires,
            )
        machines = [render.machines_line(topo, b, topo.key_path) for b in topo.builders]
        for path, lines, header, why in ((MACHINES, machines, MACHINES_HEADER, "build machines"),):
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
            changes += _restart_daemon(cctx, self.name, "builders", PHASE_CLIENT, requires)
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
        problems = check_clients(clients, builders, self.topology)
        if builders:
            names = ", ".join(b.host.name for b, _ in builders)
            for _, client in clients:
                if client.name not in problems:
                    ctx.prove(client.name, f"a build ran on {names}")
        return problems
