"""Playbooks: YAML → a validated list of task invocations.

Format::

    name: remote-builders
    description: builder keys and nix.buildMachines for the fleet
    hosts: all                  # a --limit style selection (default: all)
    tasks:
      - task: remote_builders.setup
        with: {builders: [snix], clients: [slax]}
      - include: baseline.yaml  # another playbook, relative to this file
        hosts: tag:server       # optional narrowing (include or task)

The whole playbook (and everything it includes) is validated before any
connection opens: unknown task, unknown or missing parameter, wrong type,
include cycles → one :class:`InputError` with file:line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infratool import template, yamlsrc
from infratool.errors import InputError
from infratool.inventory import Host, Inventory, select
from infratool.suggest import did_you_mean
from infratool.tasks.base import Source, Task, check_args, load_all, load_task

PLAYBOOK_KEYS = {"name", "description", "hosts", "tasks", "vars"}
ENTRY_KEYS = {"task", "include", "with", "hosts", "name", "tags"}


@dataclass
class Invocation:
    """One task to run, with its validated arguments and host selection."""

    task: Task
    selections: tuple[str, ...]
    """Host selections that all apply (playbook's, include's, task's)."""
    playbook: str
    label: str
    tags: tuple[str, ...] = ()
    """The entry's ``tags:`` plus those of the includes it came through (for --tags/--skip-tags)."""

    def hosts(self, inventory: Inventory, limit: str | None) -> list[Host]:
        """The hosts this invocation runs on after every selection and ``--limit``."""
        chosen = {h.name for h in inventory}
        for sel in self.selections:
            chosen &= {h.name for h in select(inventory, sel)}
        if limit:
            chosen &= {h.name for h in select(inventory, limit)}
        selected = [h for h in inventory if h.name in chosen]
        return self.task.targets(selected)


@dataclass
class Playbook:
    """A validated playbook."""

    path: Path
    name: str
    description: str
    invocations: list[Invocation]


def load(path: str | Path, inventory: Inventory, extra_vars: dict[str, Any] | None = None) -> Playbook:
    """Load, validate and expand a playbook and its includes.

    ``extra_vars`` (``-e``) override the playbooks' ``vars:``; an included
    playbook sees its includer's variables over its own.
    """
    path = Path(path)
    return _load(path, inventory, (), stack=(), extra=dict(extra_vars or {}))


def _load(
    path: Path,
    inventory: Inventory,
    selections: tuple[str, ...],
    stack: tuple[Path, ...],
    tags: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Playbook:
    resolved = path.resolve()
    if resolved in stack:
        chain = " → ".join(p.name for p in (*stack, resolved))
        raise InputError(f"include cycle: {chain}", file=path)
    data = yamlsrc.load(path)
    data = yamlsrc.mapping(data, "a playbook must be a mapping with 'tasks:'", path, 1)
    yamlsrc.check_keys(data, PLAYBOOK_KEYS, path)
    variables = {
        **template.check_vars(data.get("vars"), path, yamlsrc.line_of(data, "vars")),
        **(extra or {}),
    }
    name = data.get("name") or path.stem
    hosts = data.get("hosts", "all")
    sel = _selection(hosts, inventory, path, yamlsrc.line_of(data, "hosts"))
    selections = (*selections, sel)
    entries = data.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise InputError(
            "'tasks' must be a non-empty list", file=path, line=yamlsrc.line_of(data, "tasks") or 1
        )
    invocations: list[Invocation] = []
    for i, entry in enumerate(entries):
        line = yamlsrc.line_of(entries, i)
        entry = yamlsrc.mapping(
            entry, "each task entry must be a mapping with 'task:' or 'include:'", path, line
        )
        yamlsrc.check_keys(entry, ENTRY_KEYS, path, "in task entry", line)
        entry_sel = selections
        if "hosts" in entry:
            entry_sel = (
                *selections,
                _selection(entry["hosts"], inventory, path, yamlsrc.line_of(entry, "hosts")),
            )
        entry_tags = (*tags, *_tags(entry.get("tags"), path, yamlsrc.line_of(entry, "tags") or line))
        if "include" in entry:
            if "task" in entry or "with" in entry:
                raise InputError("an entry is either 'include:' or 'task:', not both", file=path, line=line)
            target = entry["include"]
            if not isinstance(target, str):
                raise InputError("'include' must be a file name", file=path, line=line)
            sub = path.parent / target
            if not sub.exists():
                raise InputError(f"included playbook {target!r} not found", file=path, line=line)
            invocations.extend(
                _load(sub, inventory, entry_sel, (*stack, resolved), entry_tags, variables).invocations
            )
            continue
        task_name = entry.get("task")
        if not isinstance(task_name, str) or not task_name:
            raise InputError("task entry needs 'task: <name>' (or 'include:')", file=path, line=line)
        cls = load_task(task_name)
        if cls is None:
            known = ", ".join(sorted(load_all()))
            raise InputError(
                f"unknown task {task_name!r}{did_you_mean(task_name, load_all())} (known: {known})",
                file=path,
                line=yamlsrc.line_of(entry, "task"),
            )
        source = Source(file=path, line=line, params=entry.get("with"))
        given = entry.get("with")
        if given is not None:
            given = template.render(
                given,
                variables,
                lambda msg, e=entry, at=line: InputError(
                    msg, file=path, line=yamlsrc.line_of(e, "with") or at
                ),
            )
        args = check_args(cls, given, source)
        task = cls(args, source, inventory)
        label = entry.get("name") or task.label()
        invocations.append(
            Invocation(task=task, selections=entry_sel, playbook=str(name), label=str(label), tags=entry_tags)
        )
    return Playbook(
        path=path, name=str(name), description=str(data.get("description") or ""), invocations=invocations
    )


def _tags(value: object, path: Path, line: int | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise InputError("'tags' must be a tag or a list of tags", file=path, line=line)
    return tuple(t.strip() for t in value)


def filter_tags(book: Playbook, only: str | None, skip: str | None) -> Playbook:
    """The playbook keeping entries tagged with one of ``only`` and none of ``skip`` (comma lists).

    As in Ansible: without ``only`` every entry is kept, and an entry with
    no tags is kept only when ``only`` is not given. A tag no entry carries
    is an error with a did-you-mean hint, as is a selection left empty.
    """
    known = {t for inv in book.invocations for t in inv.tags}
    wanted = _tag_list(only, "--tags", known, book.path)
    unwanted = _tag_list(skip, "--skip-tags", known, book.path)
    kept = [
        inv
        for inv in book.invocations
        if (not wanted or wanted & set(inv.tags)) and not unwanted & set(inv.tags)
    ]
    if not kept:
        raise InputError("--tags/--skip-tags leave no task to run", file=book.path)
    return Playbook(path=book.path, name=book.name, description=book.description, invocations=kept)


def _tag_list(text: str | None, option: str, known: set[str], path: Path) -> set[str]:
    tags = {t.strip() for t in (text or "").split(",") if t.strip()}
    for tag in sorted(tags - known):
        hint = did_you_mean(tag, known) or f" (tags in this playbook: {', '.join(sorted(known)) or 'none'})"
        raise InputError(f"{option} {tag!r}: no task has this tag{hint}", file=path)
    return tags


def _selection(value: object, inventory: Inventory, path: Path, line: int | None) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(
            "'hosts' must be a selection like 'all', 'tag:builder' or a list of names", file=path, line=line
        )
    try:
        select(inventory, value)
    except InputError as exc:
        raise InputError(exc.message, file=path, line=line) from None
    return value
