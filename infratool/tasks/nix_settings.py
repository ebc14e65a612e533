"""``nix.settings``: manage ``key = value`` lines of nix.conf, or their NixOS equivalent.

On ``os: linux`` the lines of ``/etc/nix/nix.conf`` are edited in place
(other lines and comments kept). On ``os: nixos`` ``/etc/nix`` is read-only,
so the durable result is a generated module in the flake repo,
``hosts/<host>/generated/<module>.nix`` setting ``nix.settings``, followed
by the host's deploy step.
"""

from __future__ import annotations

import re

from infratool import nixgen
from infratool.changes import Change
from infratool.context import HostContext, LocalContext
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.lib.checks import check_abs_path
from infratool.tasks.lib.files import file_changes
from infratool.tasks.lib.local import generated_path, local_file_change
from infratool.tasks.lib.nixconf import NIX_CONF, conf_value, edit_conf, nix_setting_value

_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


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
