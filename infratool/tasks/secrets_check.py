"""The hosts ``infratool secrets check`` connects to (see :mod:`infratool.rotation.drift`).

Not a playbook task (it is not registered): the drift check only needs the
runner to connect to, and pin the host keys of, the consumers of the
secrets it checks; it plans nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infratool.changes import Change
from infratool.inventory import Host, Inventory
from infratool.rotation.policy import SecretPolicy
from infratool.tasks.base import PlanContext, Source, Task


class ConsumerHosts(Task):
    """Targets the consumer hosts of ``selected``; plans nothing."""

    name = "secrets.check"
    summary = "connect to the consumers of the selected secrets (drift check)"

    def __init__(
        self, args: dict[str, Any], source: Source, inventory: Inventory, selected: Iterable[SecretPolicy]
    ) -> None:
        self.consumers = {c.host for s in selected for c in s.consumers}
        super().__init__(args, source, inventory)

    def targets(self, selected: list[Host]) -> list[Host]:
        return [h for h in selected if h.name in self.consumers]

    def plan(self, ctx: PlanContext) -> list[Change]:
        return []
