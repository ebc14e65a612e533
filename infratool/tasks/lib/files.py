"""Making a host file hold given content, mode and owner: the changes, and the actions they name.

:func:`file_changes` is what every task family calls to manage a file on a
host (``files.content``, nix.conf, builder keys, cache keys ...). The actions
it names (``files.put``, ``files.stream``, ``files.meta``) are registered
here, next to it, so any module that plans such a change also defines how it
is applied.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.diffs import head_diff, size_line, text_diff
from infratool.errors import HostError, InfratoolError
from infratool.facts import FileState
from infratool.remote import StreamedContent, expected_state
from infratool.secrets.secret import Secret
from infratool.tasks.lib.source import LocalSource


def file_changes(
    ctx: HostContext,
    task: str,
    path: str,
    content: bytes | Secret | LocalSource | None,
    mode: int | None,
    owner: str | None,
    group: str | None,
    secret: bool = False,
) -> list[Change]:
    """Changes to make ``path`` hold ``content`` with mode/owner/group (shared by tasks).

    A path that resolves through a symlinked parent, or is a directory (or
    any other non-file), fails the host: it is never written. A symlink at
    the path is replaced by the file, never followed. The plan's diff shows
    old content only when every user on the host may read it: a private
    file's or a symlink target's content is not shown. The write carries what
    the plan saw, so the host refuses it if the file changed since.

    ``content`` given as a :class:`LocalSource` is never held whole: the plan
    keeps its hash and first lines, the change carries the source's path and
    hash, and the apply streams it (``files.stream``). Not for secrets.
    """
    current = ctx.file(path)
    source = content if isinstance(content, LocalSource) else None
    raw = content.reveal_bytes() if isinstance(content, Secret) else content
    if current.via_symlink:
        raise HostError(ctx.name, f"{path}: a parent directory is a symlink: refusing to write through it")
    if current.exists and not current.is_file and not current.is_symlink:
        raise HostError(ctx.name, f"{path} exists and is not a regular file (a directory?): not written")
    if current.is_symlink and raw is None:
        raise HostError(ctx.name, f"{path} is a symlink: refusing to change the mode/owner of its target")
    survey = source.survey() if source is not None else None
    desc_bits = []
    if raw is None or not current.exists:
        content_differs = raw is not None
    elif survey is not None:
        content_differs = _sha256(current) != survey.sha256
    elif secret or current.content is None:
        # Secret files are compared by hash only: their content never travels.
        content_differs = current.sha256 != hashlib.sha256(raw).hexdigest()
    else:
        content_differs = current.content != raw
    if not current.exists:
        verb = "create"
    elif current.is_symlink:
        verb = "update"
        desc_bits.append("replace symlink with a file")
    else:
        verb = "update"
        if content_differs:
            desc_bits.append("content")
        if mode is not None and current.mode != mode:
            desc_bits.append(f"mode {current.mode:04o} → {mode:04o}")
        if owner and current.owner != owner:
            desc_bits.append(f"owner {current.owner} → {owner}")
        if group and current.group != group:
            desc_bits.append(f"group {current.group} → {group}")
        if not desc_bits:
            return []
    if raw is None:  # metadata only, on a file that exists
        return [_meta_change(ctx, task, path, mode, owner, group, desc_bits)]
    desc = f"{verb} {path}" + (f" ({', '.join(desc_bits)})" if desc_bits else "")
    if verb == "create" or current.is_symlink:
        desc += f" (mode {mode if mode is not None else 0o644:04o})"
    diff = ""
    if content_differs:
        hidden = None if secret else unshown_reason(current)
        if hidden:
            diff = f"--- {path}\n+++ {path}\n{hidden}"
        elif survey is not None:
            diff = (
                head_diff(path, survey.head, survey.lines)
                if not current.exists
                else f"--- {path}\n+++ {path}\n{size_line(current.size, survey.size)}"
            )
        else:
            old = current.text if current.exists else None
            diff = text_diff(old, raw.decode(errors="replace"), path, secret)
    expect = expected_state(current.exists, current.is_file, current.is_symlink, _sha256(current))
    if survey is not None:
        ctx.plan_write(path, None, mode, owner, group, sha256=survey.sha256, size=survey.size)
        args = {
            "path": path,
            "source": source.path,
            "variables": source.variables,
            "size": survey.size,
            "sha256": survey.sha256,
            "mode": mode,
            "owner": owner,
            "group": group,
            "expect": expect,
        }
        return [Change(ctx.name, task, desc, op="files.stream", args=args, diff=diff, action=verb)]
    ctx.plan_write(path, raw, mode, owner, group, secret=secret)
    payload = content if secret and isinstance(content, Secret) else raw
    args = {"path": path, "content": payload, "mode": mode, "owner": owner, "group": group, "expect": expect}
    return [Change(ctx.name, task, desc, op="files.put", args=args, diff=diff, action=verb)]


@action("files.put")
def put(
    hctx: HostContext,
    path: str,
    content: bytes | Secret,
    mode: int | None,
    owner: str | None,
    group: str | None,
    expect: str | None,
) -> None:
    """Write ``content`` to ``path``; the host refuses if the file is no longer as ``expect`` says."""
    hctx.put_file(path, content, mode=mode, owner=owner, group=group, expect=expect)


@action("files.stream")
def stream(
    hctx: HostContext,
    path: str,
    source: str,
    variables: dict[str, str] | None,
    size: int,
    sha256: str,
    mode: int | None,
    owner: str | None,
    group: str | None,
    expect: str | None,
) -> None:
    """Write the local ``source`` (rendered with ``variables``) to ``path``, read in chunks as it is sent.

    The bytes sent must hash to the plan's ``sha256``: a source edited since
    the plan is refused on the host before the rename (nothing written).
    """
    rendered = LocalSource(source, variables)
    content = StreamedContent(size, sha256, rendered.chunks, label=source)
    hctx.put_file(path, content, mode=mode, owner=owner, group=group, expect=expect)


@action("files.meta")
def set_meta(hctx: HostContext, path: str, mode: int | None, owner: str | None, group: str | None) -> None:
    """Set mode/owner/group of an existing file (never ``chmod PATH``: chmod follows a swapped-in symlink)."""
    hctx.set_meta(path, mode, owner, group)


def unshown_reason(current: FileState) -> str | None:
    """Why the current content of a file must not appear in a plan (None: it may).

    Only what every user on the host may read is shown: a plan is printed,
    logged and saved as JSON, so it must not become a way to read a private
    file (a rotated token) or whatever a symlink points to.
    """
    if not current.exists:
        return None
    if current.is_symlink:
        return "(content of a symlink target: not shown)"
    if current.hidden:
        return "(secret content: not shown)"
    if not current.world_readable:
        mode = "private" if current.mode is None else f"{current.mode:04o}"
        return f"(content of a {mode} file: not shown)"
    if current.content is None:
        return "(content not read: larger than 256 KiB)"
    return None


def _sha256(current: FileState) -> str | None:
    if current.sha256:
        return current.sha256
    return None if current.content is None else hashlib.sha256(current.content).hexdigest()


def _meta_change(ctx, task, path, mode, owner, group, bits) -> Change:
    args = {"path": path, "mode": mode, "owner": owner, "group": group}
    return Change(
        ctx.name, task, f"update {path} ({', '.join(bits)})", op="files.meta", args=args, action="update"
    )


def consumer_files(flake: Path) -> dict[str, frozenset[str]]:
    """Host → the files the fleet's rotation policy delivers secrets to (empty without a policy).

    A ``files.content`` over one of them is treated as secret: its content is
    compared by hash and never shown, whatever the task says.
    """
    path = flake / "secrets" / "rotation.yaml"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _consumer_files(path, stamp)


@functools.lru_cache(maxsize=8)
def _consumer_files(path: Path, stamp: int) -> dict[str, frozenset[str]]:
    from infratool.rotation.policy import load_policy

    try:
        policy = load_policy(path, root=path.parent.parent.resolve())
    except InfratoolError:
        return {}  # a broken policy is reported by the tasks that use it
    found: dict[str, set[str]] = {}
    for spec in policy.secrets.values():
        for consumer in spec.consumers:
            if consumer.file is not None:
                found.setdefault(consumer.host, set()).add(consumer.file.path)
    return {host: frozenset(paths) for host, paths in found.items()}
