"""The ``cache-key`` rotation kind: a binary cache's signing key, for ``secrets status`` / ``rotate``.

The rotation itself is ``binary_cache.rotate_key`` (:mod:`.rotate`, on the one
rotation engine). This kind finds the caches the fleet's playbooks rotate
(:mod:`infratool.tasks.configured`), shows each key's age against the entry's
``max_age``, and hands ``secrets rotate cache-key/<cache>`` that entry, set
to rotate now (or, with ``--due``, only when its triggers say so).
"""

from __future__ import annotations

from typing import Any

from infratool.rotation.kinds import Kind, StatusRow, register_kind
from infratool.rotation.policy import parse_duration
from infratool.rotation.state import RotationState, SecretState, key
from infratool.tasks.binary_cache.keys import KIND, SOPS_FILE, generation
from infratool.tasks.binary_cache.rotate import BinaryCacheRotateKey
from infratool.tasks.configured import configured


class CacheKeyKind(Kind):
    """Every cache of a ``binary_cache.rotate_key`` entry of the fleet's playbooks."""

    name = KIND

    def status(self, inventory: Any, st: RotationState, **options: Any) -> list[StatusRow]:
        """One row per cache: age (the state file), ``max_age`` and ``generation`` of its entry, due."""
        rows = []
        for task in configured(inventory, BinaryCacheRotateKey):
            spec, args = task.spec, task.args
            entry = st.rotations.get(key(KIND, spec.name)) or SecretState()
            age, max_age = entry.age(), parse_duration(args["max_age"]) if args["max_age"] else None
            current = entry.extra.get("current")
            key_generation = generation(current, spec.name) if current else None
            due = (age is not None and max_age is not None and age > max_age) or (
                args["generation"] is not None
                and key_generation is not None
                and key_generation < args["generation"]
            )
            rows.append(
                StatusRow.of(
                    KIND,
                    spec.name,
                    entry,
                    max_age=max_age,
                    due=bool(due) or entry.phase is not None,
                    targets=[args["server"], *args["clients"]],
                    file=f"secrets/{SOPS_FILE}",
                    configured=task.source,
                    generation=key_generation,
                    current=current,
                )
            )
        return rows

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
        """The entry rotating ``names`` (first match): forced now, or left to its triggers with ``due``."""
        for task in configured(inventory, BinaryCacheRotateKey):
            if names is None or task.spec.name in names:
                if due and not force:
                    task.lock_wait = lock_wait  # its generation / max_age decide (or resume)
                else:
                    task.force_rotation(lock_wait)
                return task
        return None


register_kind(CacheKeyKind())
