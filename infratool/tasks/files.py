"""Generic tasks: file content/mode/owner, file absence, guarded commands.

These make the engine useful before any capability exists, and they are what
the benchmark's converge is made of.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from infratool import log
from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.secrets.secret import Secret
from infratool.tasks.base import HostTask, Param, PlanContext, register
from infratool.tasks.lib.checks import check_abs_path, check_mode, check_name
from infratool.tasks.lib.files import consumer_files, file_changes
from infratool.tasks.lib.source import STREAM_ABOVE, LocalSource


@action("files.remove")
def remove(hctx: HostContext, path: str) -> None:
    """Remove ``path`` (a missing file is fine)."""
    hctx.run(f"rm -f -- {shlex.quote(path)}", what=f"remove {path}")


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
        "source": Param(
            str, help="local file copied as it is (relative to the playbook); large ones are streamed"
        ),
        "mode": Param(str, help="octal mode, e.g. '0644'", check=check_mode),
        "owner": Param(str, check=check_name),
        "group": Param(str, check=check_name),
        "secret": Param(
            bool, default=False, help="content is secret: never shown in plans or logs; new files get 0600"
        ),
    }

    def validate(self) -> None:
        given = [k for k in ("content", "template", "source") if self.args[k] is not None]
        if len(given) != 1:
            raise self.source.error("files.content: give exactly one of 'content', 'template' or 'source'")
        for key in ("template", "source"):
            if self.args[key] is not None:
                local = self.source.file.parent / self.args[key]
                if not local.is_file():
                    raise self.source.error(f"files.content: {key} {self.args[key]!r} not found", key)
                # Kept as a path, not read: a large file is streamed at apply time.
                self._local = str(local.resolve())
        if self.args["secret"] and self.args["content"] is not None:
            # Registered now, before anything could print it.
            self.args["content"] = Secret(self.args["content"])

    def label(self) -> str:
        return f"files.content {self.args['path']}"

    def inputs(self) -> list[Path]:
        return [Path(self._local)] if self.args["content"] is None else []

    def _private(self, host: Host) -> bool:
        """Whether this file's content must never travel or show: ``secret``, or a rotation consumer's file."""
        return self.args["secret"] or self.args["path"] in consumer_files(self.inventory.flake).get(
            host.name, ()
        )

    def fact_requests(self, host: Host) -> list[FactRequest]:
        kind = "file_meta" if self._private(host) else "file"
        return [FactRequest(kind, self.args["path"])]

    def render(self, host: Host) -> bytes | Secret | LocalSource:
        """The content for ``host``: bytes, a Secret, or a large local file left to be streamed."""
        if self.args["content"] is not None:
            content: Any = self.args["content"]
            return content if isinstance(content, Secret) else content.encode()
        variables = None
        if self.args["template"] is not None:
            variables = {"host": host.name, "address": host.address, "user": host.user}
        source = LocalSource(self._local, variables)
        if self.args["secret"]:
            # Secret content is registered with the redactor, so it is held (secret files are small).
            data = source.read()
            return Secret(data.decode() if variables is not None else data)
        return source if os.path.getsize(self._local) > STREAM_ABOVE else source.read()

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
