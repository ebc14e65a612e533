"""The task entries the fleet's playbooks configure, for commands that act outside a playbook.

``secrets status`` and ``secrets rotate`` cover the cache signing key and the
builder keys, whose configuration (server, clients, builders, max age) lives
in the playbooks' ``binary_cache.rotate_key`` and ``remote_builders.setup``
entries, not in a policy file of their own. The playbooks read are, in this
order (each file once):

1. ``playbooks/*.yaml`` beside the inventory;
2. ``playbooks/*.yaml`` in the flake repo, if that is elsewhere;
3. every playbook that ran one of these rotations before, wherever it lives:
   ``run``/``apply`` of a playbook records the file that configures each
   rotation it ran (that playbook, or one it includes) in the rotation state
   file (``extra.playbook``, :func:`remember`); includes are followed, so a
   fleet whose playbooks sit outside the inventory's directory (the lab's
   ``.infratool-lab/hosts.yaml`` with the repository's ``playbooks/``) is
   found after its first run. A recorded file that is gone is skipped.

Every file there is read, so an entry in an included file counts once
however many files include it.

Only ``task:`` / ``with:`` of each entry are read, validated like a playbook
would validate them; templating and ``vars:`` are not applied (a templated
entry is skipped with a warning), since these commands need the literal
configuration of keys, not a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from infratool import log, yamlsrc
from infratool.errors import InputError
from infratool.inventory import Inventory
from infratool.tasks.base import Source, Task, check_args

PLAYBOOK_DIRS = ("playbooks",)
RECORDED = "playbook"
"""The key, in a rotation state entry's ``extra``, of the playbook that ran it."""

_ALSO: ContextVar[tuple[Path, ...]] = ContextVar("infratool_configured_also", default=())


def playbook_files(inventory: Inventory) -> list[Path]:
    """The fleet's playbooks by the rule of the module docstring, once each."""
    roots = [inventory.path.parent, inventory.flake]
    seen: dict[Path, None] = {}
    for root in roots:
        for name in PLAYBOOK_DIRS:
            folder = Path(root) / name
            if folder.is_dir():
                for path in sorted(folder.glob("*.y*ml")):
                    seen.setdefault(path.resolve(), None)
    for path in (*recorded_playbooks(inventory), *_ALSO.get()):
        if path.is_file():
            seen.setdefault(path.resolve(), None)
    return list(seen)


def recorded_playbooks(inventory: Inventory) -> list[Path]:
    """The playbooks the rotation state file records as having run a rotation (may be gone)."""
    from infratool.rotation import state

    st = state.load_dir(inventory.flake / "secrets")
    found = (entry.extra.get(RECORDED) for entry in st.rotations.values())
    return [Path(p) for p in dict.fromkeys(found) if p]


@contextlib.contextmanager
def also_reading(paths: Sequence[Path]) -> Iterator[None]:
    """Within the block, :func:`configured` reads ``paths`` too (the playbook a command just ran)."""
    token = _ALSO.set(tuple(Path(p).resolve() for p in paths))
    try:
        yield
    finally:
        _ALSO.reset(token)


def remember(inventory: Inventory, playbook: Path) -> list[str]:
    """Record where ``playbook`` configures each rotation that has run, in its state entry.

    The file recorded is the one holding the entry: ``playbook`` itself or a
    playbook it includes (site.yaml's binary-cache.yaml), which is what a
    later ``secrets status`` reads.

    Called after ``run``/``apply``: the entries exist once a rotation began,
    so only what actually rotated is recorded, and only when it changed
    (no state write otherwise). Returns the state keys recorded.
    """
    from infratool.rotation import state
    from infratool.rotation.engine import edit_state
    from infratool.rotation.kinds import all_kinds, call_with_options

    path = Path(playbook).resolve()
    reached = {str(p.resolve()) for p, _ in _entries([path])}
    secrets_dir = inventory.flake / "secrets"
    current = state.load_dir(secrets_dir)
    if not current.rotations:
        return []  # nothing ever rotated here: nothing to record (most runs)
    keys = []
    with also_reading([path]):
        for kind in all_kinds():
            try:
                rows = call_with_options(kind.status, inventory, state.load_dir(secrets_dir), options={})
            except InputError:
                continue  # a kind whose own configuration is broken says so in `secrets status`
            for row in rows:
                where = str(row.extra.get("configured", "")).rpartition(":")[0]
                full = state.key(kind.name, row.name)
                entry = current.rotations.get(full)
                # The file that configures it (site.yaml's include), which is what a later read needs.
                if where in reached and entry is not None and entry.extra.get(RECORDED) != where:
                    keys.append((full, where))
    if keys:
        with edit_state(secrets_dir) as st:
            for full, where in keys:
                st.get(full).extra[RECORDED] = where
    return [full for full, _ in keys]


def configured(inventory: Inventory, cls: type[Task]) -> list[Task]:
    """Every entry of task ``cls`` in the fleet's playbooks, validated (duplicates dropped).

    A file that cannot be read, or an entry that does not validate, is
    logged and skipped: one broken playbook must not hide the others' keys
    from ``secrets status``.
    """
    found: list[Task] = []
    seen: set[str] = set()
    for path, entries in _entries(playbook_files(inventory)):
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or entry.get("task") != cls.name:
                continue
            params = entry.get("with")
            source = Source(file=path, line=yamlsrc.line_of(entries, index), params=params)
            if "{{" in repr(params):
                log.get_logger("infratool.tasks").warning(
                    "templated entry skipped", file=str(path), line=source.line, task=cls.name
                )
                continue
            try:
                task = cls(check_args(cls, params, source), source, inventory)
            except InputError as exc:
                log.get_logger("infratool.tasks").warning(
                    "entry skipped", file=str(path), line=source.line, error=exc.message
                )
                continue
            fingerprint = repr(sorted(task.args.items(), key=lambda kv: kv[0]))
            if fingerprint not in seen:
                seen.add(fingerprint)
                found.append(task)
    return found


def _entries(paths: list[Path]) -> Iterator[tuple[Path, list[Any]]]:
    """``(file, its tasks: list)`` of each playbook in ``paths`` and of everything they include.

    A recorded playbook is often one that only includes others (site.yaml):
    its includes are read too, relative to the including file, each once. A
    file that cannot be read is logged and skipped.
    """
    queue = list(paths)
    visited = {p.resolve() for p in queue}
    while queue:
        path = queue.pop(0)
        try:
            data = yamlsrc.load(path)
        except InputError as exc:
            log.get_logger("infratool.tasks").warning("playbook skipped", file=str(path), error=exc.message)
            continue
        entries = data.get("tasks") if isinstance(data, dict) else None
        entries = entries if isinstance(entries, list) else []
        for entry in entries:
            included = entry.get("include") if isinstance(entry, dict) else None
            if isinstance(included, str) and "{{" not in included:
                child = (path.parent / included).resolve()
                if child not in visited and child.is_file():
                    visited.add(child)
                    queue.append(child)
        yield path, entries
