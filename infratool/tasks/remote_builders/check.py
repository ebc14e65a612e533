"""The ``remote_builders.check`` task: prove every client builds on every builder, change nothing."""

from __future__ import annotations

from infratool.changes import Change
from infratool.context import HostContext
from infratool.errors import VerifyError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.tasks.base import PlanContext, register
from infratool.tasks.remote_builders.common import TopologyTask
from infratool.tasks.remote_builders.spec import Builder
from infratool.tasks.remote_builders.verify import check_client


@register
class Check(TopologyTask):
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

    def _check(
        self, cctx: HostContext, client: Host, builders: list[tuple[Builder, HostContext | None]]
    ) -> None:
        problems = check_client(cctx, client, builders, self.topology)
        if problems:
            raise VerifyError(f"{client.name}: " + "; ".join(problems))
