"""Which NixOS hosts a run deploys, as changes on those hosts.

A host is deployed when a change of this plan touches its generated
configuration (``Change.deploy``), or when an earlier run left it **pending**:
the controller marks a host pending in the flake repo before it writes the
host's generated files (:func:`mark_pending`) and clears the mark only when
the host committed the new system (:func:`clear_pending`). A run killed after
the files were written, a watchdog that rolled the host back, a failed
verify: the next plan deploys that host again, so the fleet converges, and a
converged fleet plans 0 deploys.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path
from typing import Any

from infratool.changes import LOCAL, Change, action
from infratool.inventory import Inventory
from infratool.nixssh import nix_ssh_env

from .build import host_from_args, host_to_args
from .engine import DEFAULT_CONFIRM_TIMEOUT, OP

PENDING_DIR = ".infratool/deploy-pending"
"""In the flake repo: one empty file per NixOS host whose last deploy has not committed."""
COMMAND_OP = "nixos.deploy_command"
"""The escape hatch: the inventory's ``deploy_command`` (``nixos-rebuild ...``), run on the controller."""


def pending_path(flake: Path, host: str) -> Path:
    """The pending mark of ``host``."""
    return Path(flake) / PENDING_DIR / host


def pending(flake: Path) -> set[str]:
    """Hosts whose last deploy has not committed."""
    d = Path(flake) / PENDING_DIR
    return {p.name for p in d.iterdir() if p.is_file()} if d.is_dir() else set()


def mark_pending(flake: Path, hosts: set[str]) -> None:
    """Mark ``hosts`` pending (before any of their generated files is written)."""
    for name in hosts:
        path = pending_path(flake, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def clear_pending(flake: Path, host: str) -> None:
    """``host`` committed its new system."""
    pending_path(flake, host).unlink(missing_ok=True)


def deploy_changes(
    changes: list[Change],
    inventory: Inventory,
    targets: set[str],
    stage: int,
    confirm_timeout: int = DEFAULT_CONFIRM_TIMEOUT,
    build_on: str | None = None,
) -> list[Change]:
    """One deploy change per NixOS host in ``targets`` whose configuration changed or is pending.

    ``targets``: hosts this run reaches (a host the run cannot reach keeps
    its pending mark for a later run). The change lives on the host itself
    (its own result, in parallel with the others), unless the host names a
    ``deploy_command``: that runs on the controller, as before.
    """
    files: dict[str, list[str]] = {}
    for c in changes:
        if c.deploy:
            rel = c.args.get("rel")
            files.setdefault(c.deploy, []).append(rel if isinstance(rel, str) else f"{c.task} ({c.action})")
    marked = pending(inventory.flake)
    builder = inventory.hosts.get(build_on) if build_on else None
    result = []
    for host in inventory:
        if not host.is_nixos or host.name not in targets:
            continue
        changed = list(dict.fromkeys(files.get(host.name, [])))
        if not changed and host.name not in marked:
            continue
        why = ", ".join(changed) if changed else "pending from an earlier run that did not commit"
        if host.deploy_command:
            argv = host.deploy_argv()
            result.append(
                Change(
                    host=LOCAL,
                    task="deploy",
                    action="deploy",
                    description=f"deploy {host.name}: {shlex.join(argv)} ({why})",
                    op=COMMAND_OP,
                    args={"argv": argv, "host": host_to_args(host), "flake": str(inventory.flake)},
                    stage=stage,
                    requires=(LOCAL,),
                )
            )
            continue
        via = f" built on {builder.name}" if builder else ""
        result.append(
            Change(
                host=host.name,
                task="deploy",
                action="deploy",
                description=f"deploy {host.name}: build{via}, copy, activate, verify, commit ({why})",
                op=OP,
                args={
                    "flake": str(Path(inventory.flake).resolve()),
                    "confirm_timeout": int(confirm_timeout),
                    "build_on": host_to_args(builder) if builder else None,
                    "files": changed,
                },
                deploy=host.name,
                stage=stage,
                requires=(LOCAL,),
            )
        )
    # Hosts deployed together are built in one `nix build`; the id keeps two
    # plans applied in one process (tests, a library user) from sharing a build.
    batch = {"id": uuid.uuid4().hex, "hosts": [c.host for c in result if c.op == OP]}
    for c in result:
        if c.op == OP:
            c.args["batch"] = batch
    return result


@action(COMMAND_OP)
def run_deploy_command(local: Any, argv: list[str], host: dict[str, Any], flake: str) -> None:
    """The escape hatch: run ``deploy_command`` with the inventory's port, key and pin in ``NIX_SSHOPTS``."""
    target = host_from_args(host)
    # The command's ssh (nixos-rebuild --target-host, nix copy) gets the pinned key, never ~/.ssh/known_hosts.
    with nix_ssh_env(target) as env:
        local.run(argv, what=f"deploy {target.name}", env=env)
    clear_pending(Path(flake), target.name)
