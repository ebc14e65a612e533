"""Apply a plan the way a saved plan is applied: from its data alone, by a fresh runner.

Until plan files exist, this is the test's stand-in for ``plan -o`` followed by
``apply`` in another process: every change is rebuilt from its action name and
parameters (each parameter checked to be plain data, a Secret copied by value),
nothing of the planning runner (contexts, task instances, ``ctx.state``) is
reused, and a new :class:`~infratool.runner.Runner` connects and applies.
"""

from __future__ import annotations

from typing import Any

from infratool.changes import Change, Plan
from infratool.secrets.secret import Secret

PLAIN = (str, int, float, bool, type(None), bytes)


def plain(value: Any, where: str) -> Any:
    """A copy of ``value`` that shares nothing with it; AssertionError on anything but plain data."""
    if isinstance(value, Secret):
        return Secret(value.reveal())
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value), f"{where}: non-str key"
        return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
    raise AssertionError(f"{where} is {type(value).__name__}, not plain data")


def as_data(plan: Plan, tasks: tuple[str, ...]) -> Plan:
    """``plan`` rebuilt from data; every change of ``tasks`` must be an action (no closure)."""
    changes = []
    for c in plan.changes:
        if c.task.split(" ")[0] in tasks or c.task in tasks:
            assert c.is_data, f"{c.task}: {c.description!r} is a closure, not an action"
        if not c.is_data:
            changes.append(c)  # another family's, not converted yet: kept as is
            continue
        changes.append(
            Change(
                c.host,
                c.task,
                c.description,
                op=c.op,
                args=plain(c.args, f"{c.description}: args"),
                diff=c.diff,
                phase=c.phase,
                deploy=c.deploy,
                requires=tuple(c.requires),
                action=c.action,
                stage=c.stage,
                check=c.check,
            )
        )
    return Plan(hosts=list(plan.hosts), changes=changes, failures=dict(plan.failures))
