"""Kinds of rotation, and the registry that ``secrets rotate`` / ``secrets status`` ask.

A **kind** is one sort of material that rotates: ``secret`` (a sops secret
and its consumers), ``cache-key`` (a binary cache's signing key),
``builder-key`` (a remote builder's SSH client key), later the NixOS
sops-nix delivery. Each kind lives with its task family (``tasks/...``) and
registers itself here with :func:`register_kind`; the CLI only talks to
this registry, so a new kind needs no CLI change.

The import arrow stays tasks → rotation: this module never imports a task
module by name at import time. :data:`KIND_MODULES` lists where each kind
lives, and :func:`all_kinds` imports those modules lazily (by name), which
fills the registry.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from infratool.rotation.state import RotationState

KIND_MODULES: dict[str, str] = {
    "secret": "infratool.tasks.secrets_rotation",
    "cache-key": "infratool.tasks.binary_cache.rotate",
    "builder-key": "infratool.tasks.remote_builders.setup",
}
"""Where each kind registers itself (imported lazily by :func:`all_kinds`)."""

_KINDS: dict[str, Kind] = {}


def format_age(delta: timedelta | None) -> str:
    """A duration as the largest whole unit: 3d, 5h, 40s (``none`` for ``None``)."""
    if delta is None:
        return "none"
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


@dataclass
class StatusRow:
    """One rotation as ``secrets status`` shows it (never a value)."""

    kind: str
    name: str
    age: timedelta | None
    """Since the material was last rotated (``None``: never)."""
    max_age: timedelta | None
    due: bool
    status: str = "ok"
    """``ok``, ``pending`` (a rotation is under way or was interrupted) or ``failed``."""
    targets: list[str] = field(default_factory=list)
    """Hosts the material is delivered to (consumers, clients, builders)."""
    phase: str | None = None
    generation: int | None = None
    last_result: str | None = None
    last_error: str | None = None
    needs_person: bool = False
    """Only a person can rotate it (``generator: prompt``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Kind-specific columns for JSON (``file``, ``generator``, key names...)."""

    @classmethod
    def of(
        cls,
        kind: str,
        name: str,
        entry: Any,
        *,
        max_age: timedelta | None,
        due: bool,
        targets: list[str],
        file: str,
        configured: Any,
        generation: int | None = None,
        **extra: Any,
    ) -> StatusRow:
        """A row from a state-file ``entry`` (a :class:`~infratool.rotation.state.SecretState`).

        ``file``: the sops file holding the material; ``configured``: the
        playbook entry's ``Source`` that configures the rotation.
        """
        return cls(
            kind=kind,
            name=name,
            age=entry.age(),
            max_age=max_age,
            due=due,
            status=entry.status,
            targets=targets,
            phase=entry.phase,
            generation=entry.generation if generation is None else generation,
            last_result=entry.last_result,
            last_error=entry.last_error,
            extra={"file": file, **extra, "configured": f"{configured.file}:{configured.line}"},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: every kind has the same keys, plus its ``extra``."""
        return {
            "kind": self.kind,
            "name": self.name,
            **self.extra,
            "age": format_age(self.age) if self.age is not None else "never",
            "age_seconds": int(self.age.total_seconds()) if self.age is not None else None,
            "max_age": format_age(self.max_age) if self.max_age else None,
            "max_age_seconds": int(self.max_age.total_seconds()) if self.max_age else None,
            "due": self.due,
            "needs_person": self.needs_person,
            "consumers": self.targets,
            "status": self.status,
            "phase": self.phase,
            "generation": self.generation,
            "last_result": self.last_result,
            "last_error": self.last_error,
        }


class Kind(ABC):
    """One kind of rotation: how to list its rotations, and the task that rotates them.

    Subclasses set :attr:`name` and register an instance with
    :func:`register_kind` when their module is imported. The task returned by
    :meth:`rotate_task` plans the kind's rotations as phased changes through
    :mod:`infratool.rotation.engine` (begin → phases → promote/rollback).
    """

    name: ClassVar[str]
    """``secret``, ``cache-key``, ``builder-key`` (the ``kind/`` of state keys)."""

    @abstractmethod
    def status(self, inventory: Any, state: RotationState, **options: Any) -> list[StatusRow]:
        """One row per rotation of this kind that the fleet configures (may be empty).

        ``state`` is the one state file (:func:`infratool.rotation.state.load_dir`)
        of the inventory's secrets directory. ``options``: what the CLI was
        given (``policy=`` for the secret kind); a kind ignores what it does not use.
        """

    @abstractmethod
    def rotate_task(
        self,
        inventory: Any,
        names: list[str] | None,
        *,
        due: bool,
        force: bool,
        lock_wait: float,
        **options: Any,
    ) -> Any | None:
        """The task (a ``tasks.base.Task``, validated) that rotates this kind's ``names``.

        ``names``: the rotations asked for by name (without ``kind/``), or
        ``None`` for every one. ``due``: only those past their max age (or
        resuming an interrupted rotation); ``force``: even if not due.
        ``None`` when the fleet configures nothing of this kind. ``options``:
        as for :meth:`status`. The CLI validates the task and runs it like a
        playbook entry targeting every host.
        """

    def names(self, inventory: Any, **options: Any) -> list[str]:
        """The names of this kind's rotations (for ``secrets rotate NAME``)."""
        from infratool.rotation import state

        return [r.name for r in self.status(inventory, state.RotationState(), **options)]


def call_with_options(method: Any, *args: Any, options: dict[str, Any], **kwargs: Any) -> Any:
    """Call a kind's ``status``/``rotate_task`` with the CLI's ``options`` if it takes them.

    A kind written before ``**options`` existed is called without them.
    """
    params = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        kwargs.update(options)
    else:
        kwargs.update({k: v for k, v in options.items() if k in {p.name for p in params}})
    return method(*args, **kwargs)


def register_kind(kind: Kind) -> Kind:
    """Register ``kind`` (called by the module that implements it, at import)."""
    have = _KINDS.get(kind.name)
    if have is not None and type(have) is not type(kind):
        raise ValueError(f"rotation kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    """The kind registered as ``name`` (importing its module if needed); ``KeyError`` if none."""
    if name not in _KINDS and name in KIND_MODULES:
        importlib.import_module(KIND_MODULES[name])
    return _KINDS[name]


def all_kinds() -> list[Kind]:
    """Every registered kind, in :data:`KIND_MODULES` order (modules imported lazily).

    A module that does not (yet) register its kind is simply not listed.
    """
    for module in KIND_MODULES.values():
        importlib.import_module(module)
    order = list(KIND_MODULES)
    return sorted(_KINDS.values(), key=lambda k: order.index(k.name) if k.name in order else len(order))
