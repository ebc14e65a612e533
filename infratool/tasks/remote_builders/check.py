"""The ``remote_builders.check`` task: prove every client builds on every builder, change nothing.

Each client gets one **check** (``Change(action="check")``, see
:mod:`infratool.changes`): a ``nix store ping`` and a real ``--max-jobs 0``
build on each builder, proved in the builder's own store. The check's args
are plain data (the client's key path, the builders' store URIs and build
systems), so a saved plan applies it as planned. It depends on the client's
builder configuration (machines, nix.conf, the ssh alias and pinned keys,
its key file): a run where none of these changed since the last passing
check, and no builder changed either, plans no check at all; a passing check
shows "built /nix/store/… on snix" under verified.
"""

from __future__ import annotations

from typing import Any

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.errors import VerifyError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.tasks.base import PlanContext, register
from infratool.tasks.remote_builders.common import TopologyTask
from infratool.tasks.remote_builders.filetext import MACHINES, SSH_CONFIG
from infratool.tasks.remote_builders.verify import BuilderRef, check_builds

NIX_CONF = "/etc/nix/nix.conf"


@register
class Check(TopologyTask):
    """Prove every client builds on every builder (a ping and a real build), changing nothing else."""

    name = "remote_builders.check"
    summary = "nix store ping + a --max-jobs 0 build from each client on each builder"

    def fact_requests(self, host: Host) -> list[FactRequest]:
        # What a client's check depends on: a later run where none of these
        # changed (and no builder changed) need not build again.
        if host.is_nixos or host.name not in {c.name for c in self.topology.clients}:
            return []
        key = self.topology.client_key_path(host)
        return [
            FactRequest("file", MACHINES),
            FactRequest("file", NIX_CONF),
            FactRequest("file", SSH_CONFIG),
            FactRequest("file", self.topology.known_hosts_path),
            FactRequest("file_meta", key),
        ]

    def plan(self, ctx: PlanContext) -> list[Change]:
        self.require_pinned_builders()
        topo = self.topology
        builders = [b for b in topo.builders if b.name in ctx.hosts]
        refs = [BuilderRef.of(b, topo.protocol).to_dict() for b in builders]
        if not builders:
            return []  # no builder reachable: that is its own failure already, and nothing to build on
        names = ", ".join(b.name for b in builders)
        return [
            ctx.check(
                client.name,
                self.name,
                f"check: nix store ping and a --max-jobs 0 build on {names}",
                op="remote_builders.check",
                args={"key": topo.client_key_path(client), "builders": refs},
                name=f"{self.name} {names}",
                requires=tuple(b.name for b in builders),
            )
            for client in topo.clients
            if client.name in ctx.hosts
        ]


@action("remote_builders.check")
def check_builds_here(cctx: HostContext, key: str, builders: list[dict[str, Any]]) -> list[str]:
    """Ping every builder and build on each from this client; returns the proofs, raises the problems."""
    problems, proofs = check_builds(cctx, key, [(BuilderRef.from_dict(b), None) for b in builders])
    if problems:
        raise VerifyError(f"{cctx.name}: " + "; ".join(problems))
    return proofs
