"""The task contract and the task registry.

A task is a small class registered under a dotted name (``files.content``).
It declares its parameters (validated before anything connects), the facts it
needs per host (gathered in the host's one round trip), and ``plan(ctx)``,
which compares desired with actual state and returns :class:`Change` objects —
nothing when converged. It never opens a connection and never prints; it may
add ``verify(ctx, hosts)`` to prove the applied result works.

Tasks that touch one host at a time subclass :class:`HostTask` and implement
``plan_host``; tasks spanning hosts (a builder and its clients) implement
``plan`` and order their changes with ``Change.phase``. Every host-local task
is planned by the runner one host at a time: an exception of any type from
its planning fails that host only (an :class:`~infratool.errors.InputError`
stops the run with exit 3, before anything is applied).

**Changes are data.** A change names a registered action and its parameters
(``Change(host, task, description, op="files.put", args={...})``, see
:func:`infratool.changes.action`): plain data and
:class:`~infratool.secrets.secret.Secret` values only, everything the action
needs, nothing captured from planning. Material a change installs (a new key,
a new password) is generated while planning and carried in ``args`` as a
Secret, so a saved plan (``plan -o``) installs exactly what it showed. The
runner stamps each change with the digest of the facts its entry requested
on its host; a saved plan applies only where those facts are unchanged.

**Checks.** What proves something and changes nothing (a ``nix store ping``,
an HTTP probe of a cache, a Secure Boot report) is a *check*:
``ctx.check(host, task, description, op=..., args=...)`` plans one. It is
counted and shown apart ("Plan: 0 to change, 1 to check"), never as changed;
a passing check lands in the result's "verified" column, a failing one fails
its host. Plan it unconditionally: the runner keeps it only when needed —
when its host (or a host it ``requires``) changes in the same run, or when the
facts its entry read and its args differ from those of its last passing run
(:mod:`infratool.checkstate`). A converged run so plans no check at all.
``verify(ctx, changed)`` stays for proofs that must follow a change at once
(after the entry's changes, before the next entry). Model: ``command`` with
``check: true``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.facts import FactRequest
from infratool.inventory import Host, Inventory
from infratool.suggest import did_you_mean

if TYPE_CHECKING:
    from infratool.changes import Change
    from infratool.context import HostContext, LocalContext
    from infratool.options import RunOptions
    from infratool.secrets.store import SopsStore

# Modules that register tasks; imported on first lookup so `--help` stays fast.
TASK_MODULES = (
    "infratool.tasks.files",
    "infratool.tasks.nix_settings",
    "infratool.tasks.secrets_rotation",
    "infratool.tasks.remote_builders",
    "infratool.tasks.binary_cache",
    "infratool.tasks.secureboot",
)

TASKS: dict[str, type[Task]] = {}


@dataclass(frozen=True)
class Param:
    """One task parameter: its type, whether required, default and help."""

    type: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] = ()
    items: type | tuple[type, ...] | None = None
    """For lists: the type of each item."""
    check: Callable[[Any], str | None] | None = None
    """Extra check returning an error message, or None when fine."""


@dataclass(frozen=True)
class Source:
    """Where a task invocation was written: for file:line errors."""

    file: Path
    line: int | None
    params: Any = field(default=None, compare=False, repr=False)
    """The raw ``with:`` mapping (keeps the lines of each key)."""

    def line_of(self, *keys: Any) -> int | None:
        """Line of a (nested) parameter, falling back to the task's line."""
        node, line = self.params, self.line
        for key in keys:
            if node is None:
                break
            line = yamlsrc.line_of(node, key) or line
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                node = None
        return line

    def error(self, message: str, *keys: Any) -> InputError:
        """An InputError pointing at a parameter."""
        return InputError(message, file=self.file, line=self.line_of(*keys))


@dataclass
class PlanContext:
    """Everything a task may look at while planning or verifying."""

    hosts: dict[str, HostContext]
    """Reachable hosts this task targets (unreachable ones are already reported)."""
    local: LocalContext
    inventory: Inventory
    options: RunOptions
    state: dict[str, Any] = field(default_factory=dict)
    """Shared per-run scratch space (e.g. a secrets store opened once)."""

    failures: dict[str, str] = field(default_factory=dict)
    """Targets a task could not plan (e.g. ``local:<secret>``), reported without stopping the task."""

    proven: dict[str, list[str]] = field(default_factory=dict)
    """Host → what a ``verify`` proved there (the result table's "verified" column)."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Host → what a read-only task found there (plain data); the plan carries it (``Plan.reports``)."""

    def report(self, host: str, data: dict[str, Any]) -> None:
        """Record a read-only finding on ``host`` (a Secure Boot readiness report) for the plan.

        Whoever shows the plan (the CLI, ``--json``) reads it from
        ``Plan.reports``, never from the run's scratch state.
        """
        self.reports[host] = data

    def fail(self, target: str, message: str) -> None:
        """Report that ``target`` cannot be planned; the runner lists it as failed."""
        self.failures[target] = message

    def check(
        self,
        target: str,
        task: str,
        description: str,
        *,
        op: str,
        args: dict[str, Any],
        name: str = "",
        requires: tuple[str, ...] = (),
    ) -> Change:
        """A check on ``target``: the action ``op`` proves something and changes nothing.

        ``name`` keys its passing record (default: the description); the
        runner drops it when not needed (see the module docstring).
        """
        from infratool.changes import CHECK, Change

        return Change(
            target,
            task,
            description,
            op=op,
            args=args,
            action=CHECK,
            check=name or f"{task}: {description}",
            requires=requires,
        )

    def prove(self, host: str, what: str) -> None:
        """Record what a passing ``verify`` proved on ``host`` ("built on snix"), for the result."""
        self.proven.setdefault(host, []).append(what)

    def secrets(self) -> SopsStore:
        """The fleet repo's sops store (``<flake>/secrets``), opened once per run."""
        store = self.state.get("sops")
        if store is None:
            from infratool.secrets.store import SopsStore

            store = self.state["sops"] = SopsStore(self.local.root / "secrets")
        from infratool.secrets import identity

        # Once per run (memoised on the store), at planning, before the first
        # change: can we read these files, and read back the ones we create?
        identity.ensure(store)
        return store


class Task:
    """Base class of every task (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    rotates: ClassVar[bool] = False
    """True when applying may rotate or re-encrypt material under ``secrets/`` (a rotation
    kind's task): ``run``/``apply`` of its playbook then commit like ``secrets rotate``
    (cli/gitsync.py), with the same refusals before anything is touched."""
    host_local: ClassVar[bool] = False
    """True when each change touches only its own host (no cross-host order): the
    runner may then apply consecutive such entries back to back per host, with
    their file writes batched into one round trip."""

    def __init__(self, args: dict[str, Any], source: Source, inventory: Inventory) -> None:
        self.args = args
        self.source = source
        self.inventory = inventory
        self.validate()

    def validate(self) -> None:
        """Checks beyond types (raise ``self.source.error(msg, key)``)."""

    def targets(self, selected: list[Host]) -> list[Host]:
        """Hosts this task touches, given the playbook/--limit selection."""
        return selected

    def fact_requests(self, host: Host) -> list[FactRequest]:
        """Facts this task needs on ``host`` (gathered before planning)."""
        return []

    def inputs(self) -> list[Path]:
        """Local files (beyond the playbook) its changes are made from: templates, sources.

        A saved plan records their digests and ``apply`` refuses it (exit 3)
        when one changed since, as for an edited playbook. Repo files read
        through :class:`~infratool.context.LocalContext` need not be listed:
        they are recorded as the local target's facts.
        """
        return []

    def plan(self, ctx: PlanContext) -> list[Change]:
        """The changes needed to converge; empty when converged."""
        raise NotImplementedError

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        """Prove the result works; returns host → failure message. Default: nothing to check."""
        return {}

    def label(self) -> str:
        """Short description for progress and errors."""
        return self.name


class HostTask(Task):
    """A task that plans each of its hosts independently."""

    def plan(self, ctx: PlanContext) -> list[Change]:
        changes: list[Change] = []
        for hctx in ctx.hosts.values():
            changes.extend(self.plan_host(hctx, ctx))
        return changes

    def plan_host(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        """The changes needed on one host."""
        raise NotImplementedError


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available to playbooks under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    TASKS[cls.name] = cls
    return cls


def _import_task_module(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # A capability module not written yet must not break the others.
        if exc.name != module:
            raise


def load_all() -> dict[str, type[Task]]:
    """Import every task module (once) and return the registry."""
    for module in TASK_MODULES:
        _import_task_module(module)
    return TASKS


TASK_MODULE_OF = {
    "files": "infratool.tasks.files",
    "command": "infratool.tasks.files",
    "nix": "infratool.tasks.nix_settings",
    "secrets_rotation": "infratool.tasks.secrets_rotation",
    "remote_builders": "infratool.tasks.remote_builders",
    "binary_cache": "infratool.tasks.binary_cache",
    "secureboot": "infratool.tasks.secureboot",
}
"""Which module registers a task, by the part of its name before the first dot."""


def load_task(name: str) -> type[Task] | None:
    """The task called ``name``, importing only the module that defines it; None if unknown.

    A playbook of file tasks then never imports the secrets, Secure Boot or
    cache modules (a third of a small run's start-up; docs/performance.md).
    """
    if name not in TASKS:
        module = TASK_MODULE_OF.get(name.split(".", 1)[0])
        if module is not None:
            _import_task_module(module)
        if name not in TASKS:
            load_all()  # a task registered elsewhere, or an unknown name
    return TASKS.get(name)


def check_args(cls: type[Task], args: Any, source: Source) -> dict[str, Any]:
    """Validate ``with:`` arguments against ``cls.params``; returns them with defaults."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise source.error(f"'with' of {cls.name} must be a mapping of parameters")
    for key in args:
        if key not in cls.params:
            known = ", ".join(sorted(cls.params)) or "none"
            hint = did_you_mean(str(key), cls.params)
            raise source.error(f"{cls.name}: unknown parameter {key!r}{hint} (known: {known})", key)
    result: dict[str, Any] = {}
    for key, spec in cls.params.items():
        if key not in args or args[key] is None:
            if spec.required:
                raise source.error(f"{cls.name}: missing required parameter {key!r}")
            result[key] = spec.default() if callable(spec.default) else spec.default
            continue
        value = args[key]
        if not _is(value, spec.type):
            raise source.error(
                f"{cls.name}: parameter {key!r} must be {_type_name(spec.type)}, "
                f"got {_type_name(type(value))}",
                key,
            )
        if spec.items is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if not _is(item, spec.items):
                    raise source.error(
                        f"{cls.name}: {key}[{i}] must be {_type_name(spec.items)}, "
                        f"got {_type_name(type(item))}",
                        key,
                        i,
                    )
        if spec.choices and value not in spec.choices:
            raise source.error(
                f"{cls.name}: parameter {key!r} must be one of {', '.join(map(str, spec.choices))}, "
                f"got {value!r}",
                key,
            )
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise source.error(f"{cls.name}: parameter {key!r}: {problem}", key)
        result[key] = value
    return result


def _is(value: Any, types: type | tuple[type, ...]) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    # bool is an int in Python; a YAML `true` for a count is a mistake.
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "true/false",
        list: "a list",
        dict: "a mapping",
        float: "a number",
        type(None): "null",
    }
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)
