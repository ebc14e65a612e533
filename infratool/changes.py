"""Changes and plans: what a run will do, as data (after terraform's plan).

A task's ``plan()`` returns :class:`Change` objects. Each knows its host (or
:data:`LOCAL` for the flake repo), a one-line description, a redacted diff and
what applying it means: the name of a registered **action** (``op``) and its
parameters (``args``, plain data). The runner gathers them into a
:class:`Plan`, which the CLI renders for humans, dumps as JSON or saves, and
``run``/``apply`` carry out exactly that plan by looking each ``op`` up in
:data:`ACTIONS`. Because a change holds no code, a saved plan applies the same
way as one just computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# The diff a Change carries, capped and redacted; exported here, where tasks have always found it.
from infratool.diffs import text_diff as text_diff
from infratool.secrets.secret import REDACTOR

LOCAL = "local"
"""Pseudo-host for changes to the flake repo on the controller."""


def is_local(target: str) -> bool:
    """Whether a change target is the controller (``local`` or ``local:<unit>``)."""
    return target == LOCAL or target.startswith(LOCAL + ":")


CHECK = "check"
"""The ``action`` of a :class:`Change` that proves something and changes nothing.

A check is counted and shown as a check, never as "changed"; when it passes,
the result lists it under "verified". A task plans it only when needed (see
:meth:`infratool.tasks.base.PlanContext.check`): the runner drops a check
whose host saw no change in this run and whose inputs (the facts its entry
read, its args) are those of its last passing run.
"""

ActionFn = Callable[..., Any]
"""``fn(ctx, **args)``: carries out one change on the context of its host (a check's may
return what it proved: a line or a list of lines; any action may return
:class:`NothingToDo`)."""


@dataclass(frozen=True)
class NothingToDo:
    """What an action returns when, at apply time, it found nothing to do.

    Some changes are conditional on what happened earlier in the same run: a
    rotation plans "if a check failed: put the current value back" on every
    consumer, and it acts only for the units that failed. Such a change that
    did nothing is not counted as applied: the result lists it under
    ``nothing_to_do`` (``reason`` says why), and a host where only such
    changes ran stays ``ok``, not ``changed``.
    """

    reason: str = "nothing to do"


ACTIONS: dict[str, ActionFn] = {}
"""Registered actions by name (``files.put``, ``nix.write``, ...)."""

_F = TypeVar("_F", bound=ActionFn)


def action(name: str) -> Callable[[_F], _F]:
    """Decorator: register ``fn(ctx, **args)`` as the action ``name``.

    ``ctx`` is the :class:`~infratool.context.HostContext` of the change's
    host (or the local context for :data:`LOCAL` targets). ``args`` are the
    change's parameters: plain data, plus :class:`~infratool.secrets.secret.Secret`
    values that a saved plan stores sealed, never in clear.
    """

    def register(fn: _F) -> _F:
        if name in ACTIONS and ACTIONS[name] is not fn:
            raise ValueError(f"action {name!r} is registered twice")
        ACTIONS[name] = fn
        return fn

    return register


def lookup(name: str) -> ActionFn:
    """The action registered as ``name`` (importing every task module once if needed)."""
    if name not in ACTIONS:
        from infratool.tasks.base import load_all

        load_all()
    try:
        return ACTIONS[name]
    except KeyError:
        raise KeyError(f"unknown action {name!r} (known: {', '.join(sorted(ACTIONS))})") from None


@dataclass
class Change:
    """One planned modification on one host (or the local flake repo)."""

    host: str
    task: str
    description: str
    apply: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)
    """Legacy: ``apply(ctx)`` as a closure. Such a change cannot be saved in a plan
    file; every task is moving to ``op``/``args``."""
    diff: str = ""
    phase: int = 0
    """Within one task, lower phases apply on every host before higher ones."""
    deploy: str | None = None
    """A NixOS host whose generated configuration this change touches (triggers deploy)."""
    requires: tuple[str, ...] = ()
    """Hosts that must not have failed for this change to apply (e.g. the builder)."""
    action: str = "change"
    """One of create, update, delete, run, deploy, check — for the summary and JSON."""
    stage: int = 0
    """Set by the runner: the index of the playbook entry that planned this change."""
    op: str = ""
    """The registered action that applies this change (see :func:`action`)."""
    args: dict[str, Any] = field(default_factory=dict, repr=False)
    """The action's parameters: plain data (and sealed secrets in a plan file)."""
    facts: str = ""
    """Set by the runner: digest of the facts its playbook entry read on its target
    (for a local target, of the repo files the plan read). A saved plan applies
    only where these facts are unchanged."""
    check: str = ""
    """For a check (``action="check"``): its name, the key of its passing record."""
    proved: list[str] = field(default_factory=list, repr=False, compare=False)
    """Set when a check applies: what its action proved ("built /nix/store/… on snix"),
    for the result's verified column (default: the description)."""
    idle: str | None = field(default=None, repr=False, compare=False)
    """Set when its action returned :class:`NothingToDo`: why nothing was done (not counted as applied)."""

    def __post_init__(self) -> None:
        # Redact at construction, so no later path can show the raw text.
        self.description = REDACTOR.redact(self.description)
        self.diff = REDACTOR.redact(self.diff)
        if not self.op and self.apply is None:
            raise ValueError(f"change {self.description!r} has neither an action (op) nor apply")

    @property
    def is_check(self) -> bool:
        """True for a check: it proves something and changes nothing."""
        return self.action == CHECK

    @property
    def is_data(self) -> bool:
        """True when the change is an action plus parameters (it can be saved in a plan file)."""
        return bool(self.op)

    def execute(self, ctx: Any) -> None:
        """Carry out the change on ``ctx`` (its host's context).

        An action may return what it proved (a line, or a list of lines): a
        check's result then shows that under "verified"; or
        :class:`NothingToDo`, which sets :attr:`idle`.
        """
        if self.op:
            proved = lookup(self.op)(ctx, **self.args)
            if isinstance(proved, NothingToDo):
                self.idle = proved.reason
            elif isinstance(proved, str):
                self.proved = [proved]
            elif isinstance(proved, list):
                self.proved = [str(p) for p in proved]
        else:
            assert self.apply is not None
            self.apply(ctx)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view, as in ``plan --json`` (secret args withheld; docs/plan-format.md)."""
        from infratool.planfile import change_dict

        return change_dict(self, secrets=None)


@dataclass
class Plan:
    """Every change of a run, plus the hosts that could not be planned."""

    hosts: list[str]
    changes: list[Change] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    """host → why it could not be planned (unreachable, host key refused, ...)."""
    host_key_refused: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)
    """Hosts that could not be connected to (the other failures are plan errors)."""
    stale: set[str] = field(default_factory=set)
    """Targets of a saved plan whose facts changed since it was made (refused, untouched)."""

    facts: dict[str, dict[str, str]] = field(default_factory=dict)
    """Target → ``{fact key: value digest}`` its changes were planned on (``local``:
    repo file → content digest). A saved plan's drift check compares these."""
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    """host → task name → what a read-only task reported there (``PlanContext.report``), plain data."""

    def for_host(self, host: str) -> list[Change]:
        """Changes on one host, in plan order."""
        return [c for c in self.changes if c.host == host]

    @property
    def empty(self) -> bool:
        """True when nothing would change and nothing needs checking."""
        return not self.changes

    @property
    def modifications(self) -> list[Change]:
        """The changes that modify something (every change but the checks)."""
        return [c for c in self.changes if not c.is_check]

    @property
    def checks(self) -> list[Change]:
        """The planned checks."""
        return [c for c in self.changes if c.is_check]

    def counts(self) -> dict[str, int]:
        """Number of changes per host (hosts without changes included as 0)."""
        counts = {h: 0 for h in self.hosts}
        for c in self.changes:
            counts[c.host] = counts.get(c.host, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the plan: the plan-file schema, secrets withheld (docs/plan-format.md)."""
        from infratool.planfile import plan_dict

        doc = plan_dict(self, secrets=None)
        if self.reports:
            doc["reports"] = self.reports  # what read-only tasks found (secureboot status)
        return doc
