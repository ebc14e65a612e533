"""What every Secure Boot task shares: its facts, a per-host plan loop, and per-run state.

Tasks here are plain :class:`Task` s that loop over their hosts one by one:
planning is pure computation over facts plus a sops read per host, and the
sops store is not meant to be shared between threads. A host that cannot be
planned (no sbctl, no keys, a refusal) is reported with
:meth:`PlanContext.fail` and the other hosts go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from infratool.changes import Change
from infratool.context import HostContext
from infratool.errors import InfratoolError, RefusedError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.secrets.secret import REDACTOR
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, Task
from infratool.tasks.lib.checks import check_abs_path
from infratool.tasks.secureboot import backupfile
from infratool.tasks.secureboot.hostinfo import (
    MIN_VERSION,
    SBCTL_DIR,
    UPSTREAM_LEGACY_DIR,
    HostView,
    bundle_requests,
    state_request,
)

PKI_BUNDLE = Param(
    str,
    help="directory holding keys/{PK,KEK,db} (default: detected: /var/lib/sbctl or /etc/secureboot)",
    check=check_abs_path,
)

SBCTL_MISSING = (
    "sbctl is not installed (no `sbctl` on PATH): add pkgs.sbctl to environment.systemPackages "
    "(the module secureboot.lanzaboote generates does)"
)


@dataclass
class RunState:
    """Shared by the Secure Boot tasks of one run (kept in ``PlanContext.state``)."""

    planned_keys: dict[str, str] = field(default_factory=dict)
    """Hosts whose keys this run creates → the directory sbctl creates them in."""
    planned_backups: set[str] = field(default_factory=set)
    """Hosts whose backup this run (re)writes."""
    proven: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    """Hosts whose backup was written and decrypted again in this run → (directory, file hashes)."""
    restored: dict[str, str] = field(default_factory=dict)
    """Hosts a restore in this run writes to → the directory it writes into."""
    reports: dict[str, object] = field(default_factory=dict)
    """``secureboot.status`` reports by host (read by ``infratool secureboot status``)."""


def run_state(ctx: PlanContext) -> RunState:
    """This run's :class:`RunState`."""
    state = ctx.state.get("secureboot")
    if state is None:
        state = ctx.state["secureboot"] = RunState()
    return state


class SecureBootTask(Task):
    """Base of the Secure Boot tasks: facts, and a plan loop that keeps failures per host."""

    uses_bundle_param: ClassVar[bool] = False

    def fact_requests(self, host: Host) -> list[FactRequest]:
        extra = self.args.get("pki_bundle") if self.uses_bundle_param else None
        return [state_request(), *bundle_requests(extra)]

    def view(self, host: HostContext) -> HostView:
        """The host's Secure Boot facts."""
        extra = self.args.get("pki_bundle") if self.uses_bundle_param else None
        return HostView.of(host.name, host.facts, extra)

    def plan(self, ctx: PlanContext) -> list[Change]:
        changes: list[Change] = []
        for host in ctx.hosts.values():
            try:
                changes += self.plan_one(host, ctx)
            except InfratoolError as exc:
                ctx.fail(host.name, REDACTOR.redact(str(exc)).removeprefix(f"{host.name}: "))
        return changes

    def plan_one(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        """The changes for one host (raise an InfratoolError to fail just this host)."""
        raise NotImplementedError


def require_sbctl(view: HostView) -> None:
    """Refuse a host without sbctl, saying how to get it."""
    if not view.sbctl.installed:
        raise RefusedError(SBCTL_MISSING)


def fresh_store(ctx: PlanContext) -> SopsStore:
    """A sops store of its own, for an apply step (stores are not shared between threads)."""
    return SopsStore(ctx.local.root / "secrets")


def load_backup(store: SopsStore, host: str) -> backupfile.Backup | None:
    """The host's backup, or an error that names the file and says what to do."""
    try:
        return backupfile.load(store, host)
    except InfratoolError as exc:
        raise RefusedError(
            f"the key backup {backupfile.shown_file(host)} cannot be used: {exc} "
            "(is SOPS_AGE_KEY_FILE set to an identity among its recipients?)"
        ) from None


def sbctl_dir(view: HostView) -> str:
    """Where ``sbctl create-keys`` puts keys on this host, or a refusal saying why it is not one we manage."""
    if view.sbctl.status is not None and view.sbctl.version is None:
        raise RefusedError(
            f"this sbctl has no `sbctl version`, so it is older than {'.'.join(map(str, MIN_VERSION))}, "
            f"which keeps keys in its build's DatabasePath rather than {SBCTL_DIR}: update it "
            "(nixpkgs' pkgs.sbctl is newer)"
        )
    directory = view.sbctl_dir
    if directory is None:
        raise RefusedError(
            f"sbctl uses its legacy directory {UPSTREAM_LEGACY_DIR} (it says: old configuration detected): "
            "run `sbctl setup --migrate` on the host, then plan again"
        )
    return directory


def restore_dir(view: HostView, backup: backupfile.Backup) -> str:
    """Where a restore puts the backed-up keys: the directory the host's sbctl uses.

    That is the backed-up directory unless sbctl on the host now uses the
    other one (the keys were migrated, or the host runs another sbctl build);
    keys where sbctl does not look could be neither enrolled nor signed with.
    Without sbctl (or without an answer from it), the backed-up directory.
    """
    if view.sbctl.status is None:
        return backup.bundle
    return view.sbctl_dir or backup.bundle
