"""``nix.settings``: manage ``key = value`` lines of nix.conf, or their NixOS equivalent.

On ``os: linux`` the lines of ``/etc/nix/nix.conf`` are edited in place
(other lines and comments kept). On ``os: nixos`` ``/etc/nix`` is read-only,
so the durable result is a generated module in the flake repo,
``hosts/<host>/generated/<module>.nix`` setting ``nix.settings``, followed
by the host's deploy step.
"""

from __future__ import annotations

import re
from typing import Any

from infratool import nixgen
from infratool.changes import LOCAL, Change, action, text_diff
from infratool.context import HostContext, LocalContext
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.files import check_abs_path, file_changes

NIX_CONF = "/etc/nix/nix.conf"
_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


def conf_value(value: Any) -> str:
    """A nix.conf value: lists space-separated, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(conf_value(v) for v in value)
    return str(value)


def edit_conf(text: str, settings: dict[str, Any]) -> str:
    """``text`` with each setting's line replaced (first occurrence) or appended."""
    lines = text.splitlines()
    for key, value in settings.items():
        line = f"{key} = {conf_value(value)}"
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        hits = [i for i, existing in enumerate(lines) if pattern.match(existing)]
        if hits:
            lines[hits[0]] = line
            for i in reversed(hits[1:]):
                del lines[i]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def nix_setting_value(value: Any) -> Any:
    """The NixOS ``nix.settings`` form: space-separated strings become lists."""
    if isinstance(value, str) and " " in value.strip():
        return value.split()
    return value


def generated_path(host: str, module: str) -> str:
    """Repo-relative path of a generated module for a NixOS host."""
    return f"hosts/{host}/generated/{module}.nix"


def local_file_change(
    local: LocalContext, task: str, rel: str, content: str, deploy: str | None
) -> list[Change]:
    """A change writing a generated file in the flake repo, if its content differs."""
    new = content.encode()
    old = local.current(rel)
    if old == new:
        return []
    local.plan_write(rel, new)
    diff = text_diff(old.decode() if old is not None else None, content, rel)
    return [
        Change(
            LOCAL,
            task,
            f"{'update' if old is not None else 'create'} {rel}",
            op="local.write",
            args={"rel": rel, "content": new},
            diff=diff,
            deploy=deploy,
            action="update" if old is not None else "create",
        )
    ]


def _check_settings(value: dict) -> str | None:
    for key, v in value.items():
        if not isinstance(key, str) or not _KEY.match(key):
            return f"invalid setting name {key!r}"
        if not isinstance(v, str | int | bool | list) or (
            isinstance(v, list) and not all(isinstance(x, str | int) for x in v)
        ):
            return f"{key}: value must be a string, number, boolean or list of strings"
        if "\n" in conf_value(v):
            return f"{key}: value must not contain a newline"
    return None


@register
class NixSettings(Task):
    """Manage nix.conf settings (linux) or a generated ``nix.settings`` module (nixos)."""

    name = "nix.settings"
    summary = "nix.conf key = value lines (generated nix.settings module on NixOS)"
    host_local = True
    params = {
        "settings": Param(dict, required=True, help="setting → value", check=_check_settings),
        "file": Param(str, default=NIX_CONF, help="nix.conf path (os: linux)", check=check_abs_path),
        "module": Param(str, default="nix-settings", help="generated module name (os: nixos)"),
    }

    def label(self) -> str:
        return f"nix.settings {', '.join(self.args['settings'])}"

    def fact_requests(self, host: Host) -> list[FactRequest]:
        return [] if host.is_nixos else [FactRequest("file", self.args["file"])]

    def plan(self, ctx: PlanContext) -> list[Change]:
        changes: list[Change] = []
        for hctx in ctx.hosts.values():
            if hctx.host.is_nixos:
                changes += self.plan_nixos(hctx.host, ctx.local)
            else:
                changes += self.plan_linux(hctx)
        return changes

    def plan_linux(self, host: HostContext) -> list[Change]:
        """Edit nix.conf lines in place."""
        path = self.args["file"]
        current = host.file(path)
        text = current.text or "" if current.exists else ""
        new = edit_conf(text, self.args["settings"])
        if current.exists and new == text:
            return []
        return file_changes(
            host, self.name, path, new.encode(), None if current.exists else 0o644, None, None
        )

    def plan_nixos(self, host: Host, local: LocalContext) -> list[Change]:
        """Generate ``hosts/<host>/generated/<module>.nix``."""
        settings = {k: nix_setting_value(v) for k, v in self.args["settings"].items()}
        content = nixgen.module({"nix.settings": settings})
        rel = generated_path(host.name, self.args["module"])
        return local_file_change(local, self.name, rel, content, deploy=host.name)


@action("local.write")
def write_local(local: LocalContext, rel: str, content: bytes) -> None:
    """Write a generated file of the flake repo (``rel`` is relative to its root)."""
    local.put_file(rel, content)
