"""The task entries the fleet's playbooks configure, for commands that act outside a playbook.

``secrets status`` and ``secrets rotate`` cover the cache signing key and the
builder keys, whose configuration (server, clients, builders, max age) lives
in the playbooks' ``binary_cache.rotate_key`` and ``remote_builders.setup``
entries, not in a policy file of their own. The playbooks are where the
fleet repo keeps them (``playbooks/`` beside ``hosts.yaml``, and in the flake
repo if that is elsewhere); every file there is read, so an entry in an
included file counts once however many files include it.

Only ``task:`` / ``with:`` of each entry are read, validated like a playbook
would validate them; templating and ``vars:`` are not applied (a templated
entry is skipped with a warning), since these commands need the literal
configuration of keys, not a run.
"""

from __future__ import annotations

from pathlib import Path

from infratool import log, yamlsrc
from infratool.errors import InputError
from infratool.inventory import Inventory
from infratool.tasks.base import Source, Task, check_args

PLAYBOOK_DIRS = ("playbooks",)


def playbook_files(inventory: Inventory) -> list[Path]:
    """Every playbook of the fleet repo (beside the inventory) and of the flake repo, once each."""
    roots = [inventory.path.parent, inventory.flake]
    seen: dict[Path, None] = {}
    for root in roots:
        for name in PLAYBOOK_DIRS:
            folder = Path(root) / name
            if folder.is_dir():
                for path in sorted(folder.glob("*.y*ml")):
                    seen.setdefault(path.resolve(), None)
    return list(seen)


def configured(inventory: Inventory, cls: type[Task]) -> list[Task]:
    """Every entry of task ``cls`` in the fleet's playbooks, validated (duplicates dropped).

    A file that cannot be read, or an entry that does not validate, is
    logged and skipped: one broken playbook must not hide the others' keys
    from ``secrets status``.
    """
    found: list[Task] = []
    seen: set[str] = set()
    for path in playbook_files(inventory):
        try:
            data = yamlsrc.load(path)
        except InputError as exc:
            log.get_logger("infratool.tasks").warning("playbook skipped", file=str(path), error=exc.message)
            continue
        entries = data.get("tasks") if isinstance(data, dict) else None
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
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
