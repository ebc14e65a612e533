"""What ``remote_builders.setup`` and ``remote_builders.check`` share: parameters, targets, facts."""

from __future__ import annotations

import shlex

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.errors import InputError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.secrets.secret import REDACTOR
from infratool.tasks.base import PlanContext, Task
from infratool.tasks.remote_builders import spec
from infratool.tasks.remote_builders.filetext import CLIENT_KNOWN_HOSTS, MACHINES, NIX_CONF, SSH_CONFIG
from infratool.tasks.remote_builders.spec import Builder, Topology

DAEMON_RUNNING = "test -S /nix/var/nix/daemon-socket/socket"
"""Succeeds when a nix-daemon listens: an unprivileged login's ``nix-daemon --stdio`` forwards to it."""


@action("remote_builders.run")
def run_script(hctx: HostContext, script: str, what: str) -> None:
    """Run a shell ``script`` planned by a remote-builders task (POSIX sh; no secret in it)."""
    hctx.run(script, what=what)


def script_change(
    host: str, task: str, description: str, script: str, what: str, phase: int, requires: tuple[str, ...] = ()
) -> Change:
    """A change running ``script`` on ``host`` through :func:`run_script`."""
    return Change(
        host,
        task,
        description,
        op="remote_builders.run",
        args={"script": script, "what": what},
        phase=phase,
        requires=requires,
        action="run",
    )


PHASE_STORE, PHASE_BUILDER, PHASE_CLIENT, PHASE_REVOKE = 0, 1, 2, 3
"""Phases of ``remote_builders.setup`` (see its module docstring)."""


def tag(changes: list[Change], why: str, phase: int, requires: tuple[str, ...] = ()) -> list[Change]:
    """Give file changes their reason, phase and prerequisites."""
    for change in changes:
        change.description = REDACTOR.redact(f"{change.description}: {why}")
        change.phase = phase
        change.requires = requires
    return changes


def restart_daemon(
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


def home_command(user: str) -> str:
    """The read-only command printing ``user``'s home directory (empty when there is no such user)."""
    return f"getent passwd {shlex.quote(user)} | cut -d: -f6"


class TopologyTask(Task):
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
            return [
                FactRequest("file", NIX_CONF),
                FactRequest("stdout", home_command(builder.user)),
                FactRequest("succeeds", DAEMON_RUNNING),
            ]
        return [
            FactRequest("file_meta", topo.key_path),  # the private key's content never travels
            FactRequest("file", topo.known_hosts_path),
            FactRequest("file", SSH_CONFIG),
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
