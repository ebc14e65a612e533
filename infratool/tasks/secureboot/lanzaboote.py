"""``secureboot.lanzaboote``: the NixOS side of Secure Boot, as generated Nix in the flake repo.

Per host, ``hosts/<host>/generated/lanzaboote.nix``::

    { lib, pkgs, ... }:
    {
      boot.lanzaboote = { enable = true; pkiBundle = "/var/lib/sbctl"; };
      boot.loader.systemd-boot.enable = lib.mkForce false;
      environment.systemPackages = [ pkgs.sbctl ];
    }

``pkiBundle`` is the directory that holds the host's ``keys/`` — sbctl's
``/var/lib/sbctl`` or the older ``/etc/secureboot`` — detected from what the
host has (or from the keys this run creates, or from the backup a restore
will bring back). And once, ``generated/lanzaboote-flake-input.nix``: the
flake input to copy into ``flake.nix`` (infratool never edits flake.nix),
with how to add the module to each host.
"""

from __future__ import annotations

import re
import threading

from infratool import nixgen
from infratool.changes import Change
from infratool.context import HostContext
from infratool.errors import RefusedError
from infratool.tasks.base import Param, PlanContext, register
from infratool.tasks.lib.local import generated_path, local_file_change
from infratool.tasks.secureboot.common import PKI_BUNDLE, SecureBootTask, read_backup, restore_dir, run_state
from infratool.tasks.secureboot.hostinfo import CANDIDATE_DIRS

LANZABOOTE_URL = "github:nix-community/lanzaboote/v1.0.0"
"""A release tag, as lanzaboote's docs advise (its main branch moves)."""
FLAKE_SNIPPET = "generated/lanzaboote-flake-input.nix"
_MODULE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_SNIPPET_LOCK = threading.Lock()


def render_module(directory: str) -> str:
    """The per-host NixOS module enabling lanzaboote with ``pkiBundle = directory``."""
    config = {
        "boot.lanzaboote": {"enable": True, "pkiBundle": directory},
        "boot.loader.systemd-boot.enable": nixgen.Raw("lib.mkForce false"),
        "environment.systemPackages": [nixgen.Raw("pkgs.sbctl")],
    }
    notes = (
        "# Secure Boot with lanzaboote (infratool secureboot.lanzaboote). pkiBundle is the directory\n"
        "# holding this host's keys/{PK,KEK,db} (sbctl: /var/lib/sbctl; older setups: /etc/secureboot).\n"
        "# Needs the lanzaboote flake input and lanzaboote.nixosModules.lanzaboote in this host's\n"
        f"# modules: see {FLAKE_SNIPPET}. lanzaboote replaces systemd-boot, hence the mkForce.\n"
    )
    return f"{nixgen.HEADER}{notes}{{ lib, pkgs, ... }}:\n{nixgen.to_nix(config)}\n"


def render_flake_input(url: str) -> str:
    """The flake input snippet (a Nix attribute set, so it can be checked by parsing)."""
    notes = (
        "# The lanzaboote flake input. infratool does not edit flake.nix: copy `inputs.lanzaboote`\n"
        "# into it, and add to each Secure Boot host's nixosSystem modules:\n"
        "#   lanzaboote.nixosModules.lanzaboote\n"
        "#   ./hosts/<host>/generated/lanzaboote.nix\n"
        "# `inputs.nixpkgs.follows` keeps one nixpkgs in the closure (lanzaboote's advice).\n"
    )
    config = {"inputs.lanzaboote": {"url": url, "inputs.nixpkgs.follows": "nixpkgs"}}
    return f"{nixgen.HEADER}{notes}{nixgen.to_nix(config)}\n"


def _check_module(value: str) -> str | None:
    return None if _MODULE_NAME.match(value) else "must be lowercase letters, digits and dashes"


@register
class Lanzaboote(SecureBootTask):
    """Generate each host's lanzaboote module (pkiBundle detected) and the flake input snippet."""

    name = "secureboot.lanzaboote"
    summary = "generated lanzaboote NixOS module per host (pkiBundle detected) + flake input snippet"
    params = {
        "pki_bundle": PKI_BUNDLE,
        "module": Param(str, default="lanzaboote", help="generated module name", check=_check_module),
        "url": Param(str, default=LANZABOOTE_URL, help="the lanzaboote flake input URL"),
    }
    uses_bundle_param = True

    def plan_host(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        # The flake input snippet is one file for all hosts, planned even when this
        # host is refused: the first host planned writes it; the others then see it
        # in the plan's overlay and add nothing.
        with _SNIPPET_LOCK:
            snippet = render_flake_input(self.args["url"])
            changes = local_file_change(ctx.local, self.name, FLAKE_SNIPPET, snippet, deploy=None)
        return changes + super().plan_host(host, ctx)

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        directory = self.args["pki_bundle"] or self._detect(host, ctx)
        rel = generated_path(host.name, self.args["module"])
        return local_file_change(ctx.local, self.name, rel, render_module(directory), deploy=host.name)

    def _detect(self, host: HostContext, ctx: PlanContext) -> str:
        view = self.view(host)
        bundle = view.keys()
        if bundle is not None:
            return bundle.directory
        planned = run_state(ctx).planned_keys.get(host.name)
        if planned:
            return planned
        backup = read_backup(ctx, host.name)
        if backup is not None:
            return restore_dir(view, backup)  # the directory a restore brings the keys back to
        raise RefusedError(
            f"no Secure Boot keys on {host.name} (looked in {', '.join(CANDIDATE_DIRS)}) and no backup: "
            "lanzaboote signs boot files with them, so create (secureboot.create_keys) or restore "
            "them first"
        )
