"""Saved plans: one JSON schema for ``plan --json`` and ``plan -o FILE`` (docs/plan-format.md).

A plan file is the plan as data: every change's action name and parameters,
the digests of the facts each was planned on, and what the plan was computed
against (infratool version, inventory, playbook, the templates and sources
the tasks rendered). ``apply FILE`` refuses a file made for another
inventory, playbook or version, or after one of those files changed (exit 3), re-reads the
facts and refuses the hosts whose facts drifted, and applies the rest
exactly as saved. ``Secret`` values in args are sealed with sops
(:mod:`infratool.secrets.seal`); in ``plan --json`` they are withheld.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infratool import __version__
from infratool.changes import Change, Plan
from infratool.errors import InputError
from infratool.secrets.secret import REDACTOR, Secret

FORMAT = "infratool-plan"
PLAN_VERSION = 1
"""Version of the plan schema (the ``version`` field); bumped on an incompatible change."""

SECRET_KEY = "$secret"
BYTES_KEY = "$bytes"


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's content (``absent`` when it does not exist)."""
    try:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return "absent"


def files_digest(paths: list[Path]) -> str:
    """One digest over several files (name and content)."""
    h = hashlib.sha256()
    for p in sorted({str(Path(p).resolve()) for p in paths}):
        h.update(f"{p}\0{file_digest(Path(p))}\0".encode())
    return "sha256:" + h.hexdigest()


@dataclass
class Header:
    """What a plan was computed against; ``apply`` requires the same."""

    inventory: str
    inventory_digest: str
    playbook: str
    playbook_digest: str
    selection: dict[str, Any] = field(default_factory=dict)
    """The options that shaped the plan (--limit, --tags, --skip-tags, -e, --no-deploy)."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Absolute path → :func:`file_digest` of each local file the tasks made changes from
    (``Task.inputs``: templates, sources)."""
    version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def of(cls, inventory: Any, book: Any, selection: Mapping[str, Any]) -> Header:
        """The header of a plan of ``book`` over ``inventory``."""
        files = [Path(book.path), *(inv.task.source.file for inv in book.invocations)]
        inputs = sorted({str(Path(p).resolve()) for inv in book.invocations for p in inv.task.inputs()})
        return cls(
            inventory=str(Path(inventory.path).resolve()),
            inventory_digest=file_digest(Path(inventory.path)),
            playbook=str(Path(book.path).resolve()),
            playbook_digest=files_digest([f for f in files if Path(f).is_file()]),
            selection=dict(selection),
            inputs={p: file_digest(Path(p)) for p in inputs},
        )

    def to_dict(self) -> dict[str, Any]:
        """The header fields of the plan document."""
        return {
            "infratool": self.version,
            "created": self.created,
            "inventory": {"path": self.inventory, "digest": self.inventory_digest},
            "playbook": {"path": self.playbook, "digest": self.playbook_digest},
            "selection": self.selection,
            "inputs": self.inputs,
        }

    def mismatch(self, other: Header) -> str | None:
        """Why a plan with header ``self`` must not be applied now (``other``), or None."""
        if self.version != other.version:
            return f"it was made by infratool {self.version}, this is {other.version}"
        if self.inventory_digest != other.inventory_digest:
            return f"it was made for another inventory (or {other.inventory} changed since)"
        if self.playbook_digest != other.playbook_digest:
            return f"it was made for another playbook (or {other.playbook} changed since)"
        for path in sorted(set(self.inputs) | set(other.inputs)):
            if self.inputs.get(path) != other.inputs.get(path):
                # The plan holds what this file rendered to then; applying it now would
                # write content nobody can see in the file any more.
                if path not in self.inputs:
                    return f"the playbook now reads {path}, which the plan did not"
                if path not in other.inputs:
                    return f"the playbook no longer reads {path}, which the plan was made from"
                return f"{path} changed since the plan (a template or source it was made from)"
        return None


# -- args ------------------------------------------------------------------------


def encode(value: Any, secrets: dict[str, Secret] | None, where: str) -> Any:
    """``value`` as JSON data: a Secret becomes ``{"$secret": id}`` (id ``None`` when withheld).

    Withheld (``plan --json``), bytes become ``{"$bytes": null, "sha256": …}``.

    ``secrets`` collects the Secrets to seal (None: withhold them, as
    ``plan --json`` does). Anything but plain data is a task bug, named with ``where``.
    """
    if isinstance(value, Secret):
        if secrets is None:
            return {SECRET_KEY: None}
        ref = f"s{len(secrets)}"
        secrets[ref] = value
        return {SECRET_KEY: ref}
    if isinstance(value, bytes):
        if secrets is None:
            # `plan --json` shows no raw content (the diff shows what may be shown):
            # a task that forgot to wrap a secret in Secret must not leak it base64-encoded.
            return {BYTES_KEY: None, "sha256": hashlib.sha256(value).hexdigest()}
        return {BYTES_KEY: base64.b64encode(value).decode()}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: args keys must be strings")
        return {k: encode(v, secrets, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v, secrets, where) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{where}: args hold a {type(value).__name__}, not plain data")


def decode(value: Any, secrets: Mapping[str, Secret]) -> Any:
    """The inverse of :func:`encode`, with unsealed ``secrets``."""
    if isinstance(value, dict):
        if set(value) == {SECRET_KEY}:
            ref = value[SECRET_KEY]
            if ref not in secrets:
                raise InputError(f"the plan file refers to a sealed secret {ref!r} it does not hold")
            return secrets[ref]
        if BYTES_KEY in value:
            if value[BYTES_KEY] is None:
                raise InputError(
                    "the plan holds withheld content (a `plan --json` document, not a plan file)"
                )
            return base64.b64decode(value[BYTES_KEY])
        return {k: decode(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, secrets) for v in value]
    return value


# -- documents ---------------------------------------------------------------------


def change_dict(change: Change, secrets: dict[str, Secret] | None) -> dict[str, Any]:
    """One change in the plan schema."""
    return {
        "host": change.host,
        "task": change.task,
        "kind": "check" if change.is_check else "change",
        "action": change.action,
        "description": change.description,
        "diff": change.diff,
        "stage": change.stage,
        "phase": change.phase,
        "requires": list(change.requires),
        "deploy": change.deploy,
        "op": change.op or None,
        "args": encode(change.args, secrets, f"{change.task} ({change.description})") if change.op else None,
        "facts": change.facts,
        "check": change.check or None,
    }


def plan_dict(plan: Plan, secrets: dict[str, Secret] | None, header: Header | None = None) -> dict[str, Any]:
    """The plan in the plan schema (``plan --json``; with a header, the plan file's body)."""
    doc: dict[str, Any] = {"format": FORMAT, "version": PLAN_VERSION}
    if header is not None:
        doc.update(header.to_dict())
    changes = plan.modifications
    doc.update(
        {
            "hosts": plan.hosts,
            "changes": [change_dict(c, secrets) for c in plan.changes],
            "facts": plan.facts,
            "failures": plan.failures,
            "summary": {
                "changes": len(changes),
                "checks": len(plan.checks),
                "failed_hosts": sorted(plan.failures),
            },
        }
    )
    return doc


def save(
    path: Path,
    plan: Plan,
    header: Header,
    seal: Callable[[dict[str, Secret]], str],
) -> None:
    """Write ``plan`` to ``path`` (mode 0600), its Secrets sealed with ``seal``.

    Refused (exit 3, nothing written) for a plan that cannot be applied from
    a file: a change that is still a closure, or one whose args hold
    something other than plain data, or a secret value in clear.
    """
    legacy = [c for c in plan.changes if not c.is_data]
    if legacy:
        tasks = ", ".join(dict.fromkeys(c.task for c in legacy))
        raise InputError(
            f"cannot save this plan: {tasks} still plan(s) changes as code, not data "
            "(apply it with `infratool run` instead)"
        )
    if plan.failures:
        raise InputError(
            f"cannot save a plan with failed hosts ({', '.join(sorted(plan.failures))}): "
            "fix them or leave them out with --limit"
        )
    secrets: dict[str, Secret] = {}
    try:
        doc = plan_dict(plan, secrets, header)
    except TypeError as exc:
        raise InputError(f"cannot save this plan: {exc}") from None
    doc["sealed"] = seal(secrets) if secrets else None
    text = json.dumps(doc, indent=2) + "\n"
    if REDACTOR.redact(text) != text:
        # A task put a secret value into args as a plain string: refuse rather than store it.
        raise InputError("cannot save this plan: a change's args hold a secret value outside a Secret")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class Loaded:
    """A plan file read back: its header, its plan (secrets still sealed) and the sealed blob."""

    header: Header
    plan: Plan
    sealed: str | None
    raw_changes: list[dict[str, Any]]


def load(path: Path) -> Loaded:
    """Read a plan file; a file that is not one (or of another schema version) is exit 3."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("plan file not found", file=path) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not a plan file (not JSON: {exc})", file=path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError('not an infratool plan file (no "format": "infratool-plan")', file=path)
    if doc.get("version") != PLAN_VERSION:
        raise InputError(
            f"plan file version {doc.get('version')!r}, this infratool reads version {PLAN_VERSION}",
            file=path,
        )
    try:
        header = Header(
            inventory=doc["inventory"]["path"],
            inventory_digest=doc["inventory"]["digest"],
            playbook=doc["playbook"]["path"],
            playbook_digest=doc["playbook"]["digest"],
            selection=dict(doc.get("selection") or {}),
            inputs=dict(doc.get("inputs") or {}),
            version=doc["infratool"],
            created=doc.get("created", ""),
        )
        plan = Plan(hosts=list(doc["hosts"]), facts=dict(doc.get("facts") or {}))
        raw = list(doc["changes"])
        for c in raw:
            if not c.get("op"):
                raise KeyError("op")
    except (KeyError, TypeError) as exc:
        raise InputError(f"malformed plan file (field {exc})", file=path) from None
    return Loaded(header=header, plan=plan, sealed=doc.get("sealed"), raw_changes=raw)


def changes_of(loaded: Loaded, secrets: Mapping[str, Secret]) -> list[Change]:
    """The saved changes, args decoded with the unsealed ``secrets``."""
    out = []
    for c in loaded.raw_changes:
        change = Change(
            host=c["host"],
            task=c["task"],
            description=c["description"],
            diff=c.get("diff") or "",
            phase=int(c.get("phase") or 0),
            deploy=c.get("deploy"),
            requires=tuple(c.get("requires") or ()),
            action=c.get("action") or "change",
            op=c["op"],
            args=decode(c.get("args") or {}, secrets),
            facts=c.get("facts") or "",
            check=c.get("check") or "",
        )
        change.stage = int(c.get("stage") or 0)
        out.append(change)
    return out
