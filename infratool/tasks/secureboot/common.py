"""What every Secure Boot task shares: its facts, per-host planning, and per-run state.

Tasks here are :class:`HostTask` s: the runner plans their hosts in parallel,
and an unexpected exception fails only the host being planned. Planning is
computation over facts plus a sops read per host; the sops store is not
meant to be shared between threads, so every read of it goes through
:func:`read_backup` (or :func:`with_store`), one at a time. A host that cannot
be planned (no sbctl, no keys, a refusal) is reported with
:meth:`PlanContext.fail`, so the host stays for the later tasks of the run
(the lanzaboote module is what installs sbctl).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

from infratool.changes import Change
from infratool.context import HostContext
from infratool.errors import InfratoolError, InputError, RefusedError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.secrets.secret import REDACTOR
from infratool.secrets.store import SopsStore
from infratool.tasks.base import HostTask, Param, PlanContext
from infratool.tasks.lib.checks import check_abs_path
from infratool.tasks.secureboot import backupfile
from infratool.tasks.secureboot.hostinfo import (
    SBCTL_DIR,
    UPSTREAM_LEGACY_DIR,
    HostView,
    bundle_requests,
)
from infratool.tasks.secureboot.sbctlstate import MIN_VERSION, state_request

PKI_BUNDLE = Param(
    str,
    help="directory holding keys/{PK,KEK,db} (default: detected: /var/lib/sbctl or /etc/secureboot)",
    check=check_abs_path,
)

SBCTL_MISSING = (
    "sbctl is not installed (no `sbctl` on PATH): add pkgs.sbctl to environment.systemPackages "
    "and deploy, or leave the host out (--limit '!HOST'); the lanzaboote module adds it too, but is "
    "generated only for a host that has keys"
)


@dataclass
class RunState:
    """Shared by the Secure Boot tasks of one run (kept in ``PlanContext.state``)."""

    planned_keys: dict[str, str] = field(default_factory=dict)
    """Hosts whose keys this run creates → the directory sbctl creates them in."""
    planned_backups: set[str] = field(default_factory=set)
    """Hosts whose backup this run (re)writes."""


def run_state(ctx: PlanContext) -> RunState:
    """This run's :class:`RunState`."""
    state = ctx.state.get("secureboot")
    if state is None:
        state = ctx.state["secureboot"] = RunState()
    return state


_STORE_LOCK = threading.Lock()
"""One sops read at a time while hosts are planned in parallel (see the module docstring)."""


@contextmanager
def with_store(ctx: PlanContext) -> Iterator[SopsStore]:
    """The run's sops store, held by this thread alone until the block ends."""
    with _STORE_LOCK:
        yield ctx.secrets()


def read_backup(ctx: PlanContext, host: str) -> backupfile.Backup | None:
    """The host's backup from the run's store (see :func:`load_backup`), one reader at a time."""
    with with_store(ctx) as store:
        return load_backup(store, host)


class SecureBootTask(HostTask):
    """Base of the Secure Boot tasks: facts, and per-host planning that keeps refusals per host."""

    uses_bundle_param: ClassVar[bool] = False

    def fact_requests(self, host: Host) -> list[FactRequest]:
        extra = self.args.get("pki_bundle") if self.uses_bundle_param else None
        return [state_request(), *bundle_requests(extra)]

    def view(self, host: HostContext) -> HostView:
        """The host's Secure Boot facts."""
        extra = self.args.get("pki_bundle") if self.uses_bundle_param else None
        return HostView.of(host.name, host.facts, extra)

    def plan_host(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        """The changes for one host; a refusal (any InfratoolError but bad input) fails just this host.

        The failure is reported with :meth:`PlanContext.fail` rather than
        raised, so the host stays planned for the run's later tasks; any other
        exception reaches the runner, which fails this host only.
        """
        try:
            return self.changes_for(host, ctx)
        except InputError:
            raise  # no usable age identity and the like: the whole run stops once (exit 3)
        except InfratoolError as exc:
            ctx.fail(host.name, REDACTOR.redact(str(exc)).removeprefix(f"{host.name}: "))
            return []

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        """The changes for one host (raise an InfratoolError to refuse this host)."""
        raise NotImplementedError


def require_sbctl(view: HostView) -> None:
    """Refuse a host without sbctl, saying how to get it."""
    if not view.sbctl.installed:
        raise RefusedError(SBCTL_MISSING)


def host_store(h: HostContext) -> SopsStore:
    """A sops store of its own for an action on ``h``: the flake repo's, from the inventory entry.

    Actions get only their host's context, and a saved plan is applied by a
    fresh process; the host's ``flake`` says where the repo is. Stores are
    not shared between threads, so each action opens its own.
    """
    return SopsStore(h.host.flake / "secrets")


def fresh_store(ctx: PlanContext) -> SopsStore:
    """A sops store of its own, for a verify step (stores are not shared between threads)."""
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
