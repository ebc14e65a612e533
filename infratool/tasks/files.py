"""Generic tasks: file content/mode/owner, file absence, guarded commands.

These make the engine useful before any capability exists, and they are what
the benchmark's converge is made of.
"""

from __future__ import annotations

import functools
import hashlib
import shlex
import string
from pathlib import Path
from typing import Any

from infratool import log
from infratool.changes import Change, action, text_diff
from infratool.context import HostContext
from infratool.errors import HostError, InfratoolError
from infratool.facts import FactRequest, FileState
from infratool.inventory import Host
from infratool.remote import expected_state
from infratool.secrets.secret import Secret
from infratool.tasks.base import HostTask, Param, PlanContext, register


def check_abs_path(value: str) -> str | None:
    """Param check: an absolute path without '..' or control characters."""
    if not value.startswith("/"):
        return "must be an absolute path"
    if ".." in Path(value).parts:
        return "must not contain '..'"
    if any(ord(ch) < 32 for ch in value):
        return "must not contain control characters"
    return None


def check_mode(value: str) -> str | None:
    """Param check: an octal mode string like "0644"."""
    try:
        mode = int(str(value), 8)
    except ValueError:
        return f"must be an octal mode like '0644', got {value!r}"
    return None if 0 <= mode <= 0o7777 else "must be between 0000 and 7777"


def check_name(value: str) -> str | None:
    """Param check: a user or group name."""
    ok = value and all(ch.isalnum() or ch in "_-." for ch in value) and not value.startswith("-")
    return None if ok else f"invalid user/group name {value!r}"


def file_changes(
    ctx: HostContext,
    task: str,
    path: str,
    content: bytes | Secret | None,
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
    """
    current = ctx.file(path)
    raw = content.reveal_bytes() if isinstance(content, Secret) else content
    if current.via_symlink:
        raise HostError(ctx.name, f"{path}: a parent directory is a symlink: refusing to write through it")
    if current.exists and not current.is_file and not current.is_symlink:
        raise HostError(ctx.name, f"{path} exists and is not a regular file (a directory?): not written")
    if current.is_symlink and raw is None:
        raise HostError(ctx.name, f"{path} is a symlink: refusing to change the mode/owner of its target")
    desc_bits = []
    if raw is None or not current.exists:
        content_differs = raw is not None
    elif secret or current.content is None:
        # Secret files are compared by hash only: their content never travels.
        content_differs = current.sha256 != hashlib.sha256(raw).hexdigest()
    else:
        content_differs = current.content != raw
    if not current.exists:
        action = "create"
    elif current.is_symlink:
        action = "update"
        desc_bits.append("replace symlink with a file")
    else:
        action = "update"
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
    desc = f"{action} {path}" + (f" ({', '.join(desc_bits)})" if desc_bits else "")
    if action == "create" or current.is_symlink:
        desc += f" (mode {mode if mode is not None else 0o644:04o})"
    diff = ""
    if content_differs:
        hidden = None if secret else unshown_reason(current)
        if hidden:
            diff = f"--- {path}\n+++ {path}\n{hidden}"
        else:
            old = current.text if current.exists else None
            diff = text_diff(old, raw.decode(errors="replace"), path, secret)
    expect = expected_state(current.exists, current.is_file, current.is_symlink, _sha256(current))
    ctx.plan_write(path, raw, mode, owner, group, secret=secret)
    payload = content if secret and isinstance(content, Secret) else raw
    args = {"path": path, "content": payload, "mode": mode, "owner": owner, "group": group, "expect": expect}
    return [Change(ctx.name, task, desc, op="files.put", args=args, diff=diff, action=action)]


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


@action("files.meta")
def set_meta(hctx: HostContext, path: str, mode: int | None, owner: str | None, group: str | None) -> None:
    """Set mode/owner/group of an existing file (never ``chmod PATH``: chmod follows a swapped-in symlink)."""
    hctx.set_meta(path, mode, owner, group)


@action("files.remove")
def remove(hctx: HostContext, path: str) -> None:
    """Remove ``path`` (a missing file is fine)."""
    hctx.run(f"rm -f -- {shlex.quote(path)}", what=f"remove {path}")


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


@register
class FileContent(HostTask):
    """Ensure a file has the given content, mode, owner and group."""

    name = "files.content"
    summary = "file content, mode and owner (atomic writes; secret content never shown)"
    host_local = True
    params = {
        "path": Param(str, required=True, help="absolute path on the host", check=check_abs_path),
        "content": Param(str, help="literal content"),
        "template": Param(str, help="template file (relative to the playbook); $host, $address, $user"),
        "mode": Param(str, help="octal mode, e.g. '0644'", check=check_mode),
        "owner": Param(str, check=check_name),
        "group": Param(str, check=check_name),
        "secret": Param(
            bool, default=False, help="content is secret: never shown in plans or logs; new files get 0600"
        ),
    }

    def validate(self) -> None:
        if (self.args["content"] is None) == (self.args["template"] is None):
            raise self.source.error("files.content: give exactly one of 'content' or 'template'")
        if self.args["template"] is not None:
            tpl = self.source.file.parent / self.args["template"]
            if not tpl.is_file():
                raise self.source.error(
                    f"files.content: template {self.args['template']!r} not found", "template"
                )
            self._template = string.Template(tpl.read_text())
        if self.args["secret"] and self.args["content"] is not None:
            # Registered now, before anything could print it.
            self.args["content"] = Secret(self.args["content"])

    def label(self) -> str:
        return f"files.content {self.args['path']}"

    def _private(self, host: Host) -> bool:
        """Whether this file's content must never travel or show: ``secret``, or a rotation consumer's file."""
        return self.args["secret"] or self.args["path"] in consumer_files(self.inventory.flake).get(
            host.name, ()
        )

    def fact_requests(self, host: Host) -> list[FactRequest]:
        kind = "file_meta" if self._private(host) else "file"
        return [FactRequest(kind, self.args["path"])]

    def render(self, host: Host) -> bytes | Secret:
        """The content for ``host``."""
        if self.args["template"] is not None:
            text = self._template.safe_substitute(host=host.name, address=host.address, user=host.user)
            return Secret(text) if self.args["secret"] else text.encode()
        content: Any = self.args["content"]
        return content if isinstance(content, Secret) else content.encode()

    def plan_host(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        mode = int(self.args["mode"], 8) if self.args["mode"] else None
        if mode is None and self.args["secret"] and not host.file(self.args["path"]).exists:
            # A new secret file nobody gave a mode to is private (0600), not the
            # world-readable 0644 of other new files; an existing one keeps its mode.
            mode = 0o600
        return file_changes(
            host,
            self.name,
            self.args["path"],
            self.render(host.host),
            mode,
            self.args["owner"],
            self.args["group"],
            secret=self._private(host.host),
        )


@register
class FileAbsent(HostTask):
    """Ensure a file does not exist."""

    name = "files.absent"
    summary = "remove a file"
    host_local = True
    params = {"path": Param(str, required=True, check=check_abs_path)}

    def label(self) -> str:
        return f"files.absent {self.args['path']}"

    def fact_requests(self, host: Host) -> list[FactRequest]:
        return [FactRequest("file_meta", self.args["path"])]

    def plan_host(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        path = self.args["path"]
        if not host.file(path).exists:
            return []
        host.plan_remove(path)
        return [
            Change(
                host.name,
                self.name,
                f"remove {path}",
                op="files.remove",
                args={"path": path},
                action="delete",
            )
        ]


@register
class Command(HostTask):
    """Run a command, guarded by ``creates`` (a path) and/or ``unless`` (a check command)."""

    name = "command"
    summary = "run a shell command (guard it with creates/unless to stay idempotent)"
    params = {
        "command": Param(str, required=True, help="shell command run on the host"),
        "creates": Param(str, help="skip when this path exists", check=check_abs_path),
        "unless": Param(str, help="skip when this read-only command succeeds"),
        "check": Param(
            bool,
            default=False,
            help="the command only checks (changes nothing): planned as a check, shown as verified, "
            "run again only when its host changes or its inputs changed since it last passed",
        ),
    }

    def label(self) -> str:
        first = next(iter(self.args["command"].splitlines()), "")  # an empty command has no line
        return f"command {first[:40]}"

    def fact_requests(self, host: Host) -> list[FactRequest]:
        reqs = []
        if self.args["creates"]:
            reqs.append(FactRequest("exists", self.args["creates"]))
        if self.args["unless"]:
            reqs.append(FactRequest("succeeds", self.args["unless"]))
        return reqs

    def plan_host(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        if self.args["creates"] and host.facts.get("exists", self.args["creates"]):
            return []
        if self.args["unless"] and host.facts.get("succeeds", self.args["unless"]):
            return []
        cmd = self.args["command"]
        if self.args["check"]:
            return [ctx.check(host.name, self.name, f"check: {cmd}", op="command.run", args={"cmd": cmd})]
        return [
            Change(host.name, self.name, f"run: {cmd}", op="command.run", args={"cmd": cmd}, action="run")
        ]


@action("command.run")
def run_shown(host: Any, cmd: str) -> None:
    """Run a ``command`` task's command; its output is shown at ``-v`` (masked, like every log line)."""
    result = host.run(cmd, what="command")
    if result.stdout or result.stderr:
        log.get_logger("infratool.tasks.command").info(
            "command output", host=host.name, command=cmd, stdout=result.stdout, stderr=result.stderr
        )
