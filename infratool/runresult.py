"""What a run reports: per host (:class:`HostResult`), per run (:class:`RunResult`), and exit codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infratool.changes import Plan
from infratool.errors import EXIT_CHANGES, EXIT_FAILED, EXIT_HOSTKEY, EXIT_OK, EXIT_STALE


@dataclass
class HostResult:
    """Outcome of a run on one host."""

    host: str
    status: str = "ok"
    """ok | changed | failed | unreachable | refused | stale (a saved plan's facts drifted)"""
    applied: list[str] = field(default_factory=list)
    error: str | None = None
    verified: list[str] = field(default_factory=list)
    """What the verify steps proved on this host after the change (``PlanContext.prove``)."""
    nothing_to_do: list[str] = field(default_factory=list)
    """Conditional changes whose action found nothing to do ("description: reason"); not applied."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "host": self.host,
            "status": self.status,
            "applied": self.applied,
            "nothing_to_do": self.nothing_to_do,
            "verified": self.verified,
            "error": self.error,
        }


@dataclass
class RunResult:
    """Outcome of applying a plan."""

    plan: Plan
    hosts: dict[str, HostResult]

    @property
    def failed(self) -> list[str]:
        """Hosts that failed, were unreachable or were refused."""
        return [h for h, r in self.hosts.items() if r.status in ("failed", "unreachable", "refused")]

    @property
    def exit_code(self) -> int:
        """4 if a host key was refused, 1 if anything else failed, 5 if a saved plan was stale somewhere, else 0."""
        if any(r.status == "refused" for r in self.hosts.values()):
            return EXIT_HOSTKEY
        if self.failed:
            return EXIT_FAILED
        return EXIT_STALE if any(r.status == "stale" for r in self.hosts.values()) else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "plan": self.plan.to_dict(),
            "results": [r.to_dict() for r in self.hosts.values()],
            "failed": self.failed,
        }


def plan_exit_code(plan: Plan, detailed: bool) -> int:
    """Exit code of `plan`: 4 refused key, 1 failures, 2 pending changes (detailed), else 0.

    Checks alone are not "changes pending": a check changes nothing (terraform's 2 is
    "changes present"), so a plan of only checks exits 0 and still shows them.
    """
    if plan.host_key_refused:
        return EXIT_HOSTKEY
    if plan.failures:
        return EXIT_FAILED
    if detailed and plan.modifications:
        return EXIT_CHANGES
    return EXIT_OK
