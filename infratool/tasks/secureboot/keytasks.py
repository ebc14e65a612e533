"""Tasks for the keys themselves: status, create, back up, check the backup, restore.

None of these writes firmware. Private keys leave a host only inside a
backup change: read into memory as :class:`Secret` s, written to sops
(encrypted before it touches disk) and proved by decrypting the file again.
"""

from __future__ import annotations

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.errors import InfratoolError, RefusedError, VerifyError
from infratool.secrets.store import SopsStore
from infratool.tasks.base import Param, PlanContext, register
from infratool.tasks.lib.checks import check_abs_path
from infratool.tasks.secureboot import backupfile, report
from infratool.tasks.secureboot.common import (
    PKI_BUNDLE,
    SBCTL_MISSING,
    SecureBootTask,
    fresh_store,
    host_store,
    load_backup,
    read_backup,
    require_sbctl,
    restore_dir,
    run_state,
    sbctl_dir,
)
from infratool.tasks.secureboot.hostinfo import KEY_FILES, Bundle, HostView
from infratool.tasks.secureboot.keyfiles import (
    check_hashes,
    host_hashes,
    is_private,
    read_bundle,
    write_bundle,
)


@register
class Status(SecureBootTask):
    """Readiness report per host; plans nothing (``infratool secureboot status`` shows it).

    The report goes out through :meth:`PlanContext.report`: the plan carries
    it, as data, to whoever shows it (the CLI's table, ``--json``).
    """

    name = "secureboot.status"
    summary = "Secure Boot readiness per host (sbctl status/verify, keys, backup); changes nothing"
    params = {"pki_bundle": PKI_BUNDLE}
    uses_bundle_param = True

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        # A store of its own, without the run's identity check: a report reads
        # backups and changes nothing, so a missing age key is something it
        # reports (backup-unreadable), not a reason to stop.
        built = report.build(self.view(host), fresh_store(ctx), self.args["pki_bundle"])
        ctx.report(host.name, built.to_dict())
        return []


def _incomplete(view: HostView) -> RefusedError | None:
    partial = view.partial()
    if not partial:
        return None
    b = partial[0]
    return RefusedError(
        f"{b.directory} holds an incomplete key set (missing {', '.join(b.missing())}): restore it "
        f"from the backup (infratool secureboot restore {view.name}) or move it aside"
    )


@register
class CreateKeys(SecureBootTask):
    """``sbctl create-keys`` on hosts that have no keys and no backup of keys; never touches existing keys."""

    name = "secureboot.create_keys"
    summary = "create Secure Boot keys with sbctl on hosts that have none (never overwrites)"
    params = {}

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        view = self.view(host)
        require_sbctl(view)
        if view.keys() is not None:
            return []  # keys exist (in sbctl's or the legacy directory): never replace them
        problem = _incomplete(view)
        if problem:
            raise problem
        if read_backup(ctx, host.name) is not None:
            # After a reinstall the firmware may trust the backed-up keys: new
            # keys would sign boot files it rejects. Restore; never replace.
            raise RefusedError(
                f"no keys on the host, but {backupfile.shown_file(host.name)} holds a backup of its "
                f"keys: restore them (infratool secureboot restore {host.name}) instead of creating new "
                "ones; to really start over, move that backup aside first"
            )
        directory = sbctl_dir(view)
        run_state(ctx).planned_keys[host.name] = directory
        diff = "\n".join(
            f"+ {directory}/{f}"
            + ("  (private, 0400, never leaves the host unencrypted)" if f.endswith(".key") else "")
            for f in ("GUID", *KEY_FILES)
        )
        return [
            Change(
                host.name,
                self.name,
                f"create Secure Boot keys (PK, KEK, db: RSA-4096) with `sbctl create-keys` in {directory}",
                op="secureboot.create_keys",
                args={"directory": directory},
                diff=diff,
                action="create",
            )
        ]


@register
class Backup(SecureBootTask):
    """Encrypt each host's key directory into ``secrets/secureboot/<host>.yaml`` and prove the copy."""

    name = "secureboot.backup"
    summary = "back up Secure Boot keys into the flake repo, sops-encrypted, and verify the copy"
    params = {
        "pki_bundle": PKI_BUNDLE,
        "replace": Param(
            bool,
            default=False,
            help="overwrite a backup that holds *different* keys (they may be the enrolled ones)",
        ),
    }
    uses_bundle_param = True

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        view = self.view(host)
        state = run_state(ctx)
        bundle = view.keys(self.args["pki_bundle"])
        old = read_backup(ctx, host.name)
        shown = backupfile.shown_file(host.name)
        expected: dict[str, str] | None
        moved = ""
        if bundle is not None and bundle.complete:
            hashes = bundle.hashes()
            if old is not None and not old.problems_against(hashes):
                if old.bundle == bundle.directory:
                    return []
                # Same files, another directory (`sbctl setup --migrate`): the manifest must
                # follow, or a restore would bring the keys back where sbctl no longer looks.
                moved = f"~ bundle: {old.bundle} → {bundle.directory} (same files: the keys moved)"
            if old is not None and not old.same_keys(hashes) and not self.args["replace"]:
                raise RefusedError(
                    f"{shown} holds a backup of different keys (PK.pem "
                    f"{backupfile.short(old.hashes().get('keys/PK/PK.pem', ''))} there, "
                    f"{backupfile.short(hashes['keys/PK/PK.pem'])} on the host). If the backed-up keys "
                    f"are enrolled in firmware, that file is their only copy: restore it "
                    f"(infratool secureboot restore {host.name}) or pass replace: true to back up the "
                    "host's keys over it (git history keeps the old file)"
                )
            directory, expected = bundle.directory, hashes
            lines = [moved] if moved else []
            lines += [
                f"+ {p}  sha256:{backupfile.short(d)}" + ("  (private)" if is_private(p, b"") else "")
                for p, d in sorted(hashes.items())
            ]
        elif host.name in state.planned_keys:
            directory, expected = state.planned_keys[host.name], None
            lines = ["+ GUID and keys/{PK,KEK,db}/* as secureboot.create_keys makes them"]
        else:
            problem = _incomplete(view)
            if problem:
                raise problem
            if not view.sbctl.installed:
                raise RefusedError(f"no Secure Boot keys to back up; {SBCTL_MISSING}")
            return []  # no keys yet: nothing to back up (status says "needs-keys")
        state.planned_backups.add(host.name)
        repo = ctx.local.root / "secrets"
        return [
            Change(
                host.name,
                self.name,
                f"back up {directory} into {shown} (sops-encrypted to the recipients of "
                f"{repo.name}/.sops.yaml), then decrypt it again to prove the copy",
                op="secureboot.backup",
                args={"directory": directory, "expected": expected},
                diff="\n".join(lines),
                action="create" if old is None else "update",
            )
        ]

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        return _verify_backups(ctx, changed, self.args["pki_bundle"])


@action("secureboot.create_keys")
def create_keys(h: HostContext, directory: str) -> None:
    """``sbctl create-keys``, then prove every key file landed in ``directory``."""
    h.run("sbctl create-keys", what="sbctl create-keys")
    found = host_hashes(h, directory, list(KEY_FILES))
    missing = [f for f in KEY_FILES if f not in found]
    if missing:
        raise VerifyError(f"sbctl create-keys left no {', '.join(missing)} in {directory}")


@action("secureboot.backup")
def write_backup(h: HostContext, directory: str, expected: dict[str, str] | None) -> None:
    """Read the keys in ``directory``, write the host's backup, decrypt it again to prove it.

    ``expected``: the file hashes the plan showed (None when the keys are
    created by this same run): different keys on the host are refused.
    """
    store = host_store(h)
    files = read_bundle(h, directory)
    got = {p: f.sha256 for p, f in files.items()}
    if expected is not None and got != expected:
        raise RefusedError(f"the keys in {directory} changed since the plan; plan again")
    missing = [k for k in KEY_FILES if k not in files]
    if missing:
        raise RefusedError(f"{directory} has no {', '.join(missing)}: nothing complete to back up")
    old = load_backup(store, h.name)
    target = backupfile.backup_file(h.name)
    store.path(target).parent.mkdir(parents=True, exist_ok=True)  # the store writes files, not dirs
    store.write(target, backupfile.values_for(h.name, directory, files, old))
    _prove(h.name, directory, got, store)


def _prove(host: str, directory: str, hashes: dict[str, str], store: SopsStore) -> None:
    """Decrypt the backup from disk (not from cache) and compare it with ``hashes``."""
    store.invalidate()
    written = load_backup(store, host)
    problems = ["nothing was written"] if written is None else written.problems_against(hashes)
    if problems:
        raise VerifyError(f"the backup of {directory} does not match the host: {'; '.join(problems)}")


def _verify_backups(ctx: PlanContext, hosts: set[str], directory: str | None = None) -> dict[str, str]:
    """host → problem, for hosts whose backup does not match their keys now (in ``directory``)."""
    failures: dict[str, str] = {}
    store = fresh_store(ctx)
    for name in sorted(hosts):
        h = ctx.hosts.get(name)
        if h is None:
            continue
        try:
            backup = load_backup(store, name)
            if backup is None:
                raise VerifyError(f"no backup in {backupfile.shown_file(name)}")
            found = host_hashes(h, directory or backup.bundle, sorted(backup.manifest))
            problems = backup.problems_against(found)
            if problems:
                raise VerifyError("; ".join(problems))
        except InfratoolError as exc:
            failures[name] = str(exc)
    return failures


@register
class CheckBackup(SecureBootTask):
    """Fail each host whose encrypted backup is not exactly its current keys."""

    name = "secureboot.check_backup"
    summary = "prove each host's encrypted key backup decrypts to exactly the keys on the host"
    params = {"pki_bundle": PKI_BUNDLE}
    uses_bundle_param = True

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        problems = backup_problems(self.view(host), ctx, self.args["pki_bundle"])
        if problems:
            raise RefusedError(problems)
        return []


def backup_problems(view: HostView, ctx: PlanContext, pki_bundle: str | None = None) -> str | None:
    """Why the host has no verified backup of exactly its keys (None: it has one)."""
    bundle: Bundle | None = view.keys(pki_bundle)
    shown = backupfile.shown_file(view.name)
    if bundle is None or not bundle.complete:
        return "no Secure Boot keys on the host to compare a backup with"
    backup = read_backup(ctx, view.name)
    if backup is None:
        return f"no key backup in {shown}: run secureboot.backup first"
    problems = backup.problems_against(bundle.hashes())
    if problems:
        return f"{shown} is not a backup of exactly these keys: {'; '.join(problems)}"
    return None


@register
class Restore(SecureBootTask):
    """Write the keys from the host's backup back onto it, bit-for-bit; never over different keys."""

    name = "secureboot.restore"
    summary = "restore Secure Boot keys from the encrypted backup (e.g. after a reinstall)"
    params = {
        "pki_bundle": Param(
            str, help="restore into this directory instead of the backed-up one", check=check_abs_path
        )
    }
    uses_bundle_param = True

    def validate(self) -> None:
        """Refuse a backup naming anything outside sbctl's key layout, before any connection (exit 3).

        Every host of the inventory whose backup decrypts is checked: the
        selection is not known yet, and a restore must never be the step
        that finds out. Backups that do not decrypt fail later, per host.
        """
        store = SopsStore(self.inventory.flake / "secrets")
        for name in self.inventory.hosts:
            if not store.path(backupfile.backup_file(name)).exists():
                continue
            try:
                backupfile.load(store, name)
            except backupfile.LayoutError:
                raise
            except InfratoolError:
                continue

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        shown = backupfile.shown_file(host.name)
        backup = read_backup(ctx, host.name)
        if backup is None:
            raise RefusedError(f"no key backup for {host.name} in {shown}: nothing to restore")
        damaged = backup.integrity_problems()
        if damaged:
            raise RefusedError(f"{shown} is damaged: {'; '.join(damaged)}")
        view = self.view(host)
        directory = self.args["pki_bundle"] or restore_dir(view, backup)
        current = view.bundles.get(directory)
        if current is not None:
            on_host = current.hashes()
            modes = {p: f.mode for p, f in current.files.items()}
        else:
            on_host, modes = host_hashes(host, directory, sorted(backup.files)), {}
        conflicts = [p for p, f in backup.files.items() if p in on_host and on_host[p] != f.sha256]
        if conflicts:
            raise RefusedError(
                f"{directory} already holds different keys ({', '.join(sorted(conflicts))}); refusing to "
                f"overwrite them. If they are unwanted, move them aside (mv {directory} {directory}.old) "
                "and run again"
            )
        todo = [
            f
            for p, f in sorted(backup.files.items())
            if p not in on_host or (p in modes and modes[p] != f.mode)
        ]
        if not todo:
            return []
        expected = {p: f.sha256 for p, f in backup.files.items()}
        lines = []
        if directory != backup.bundle:
            lines.append(
                f"~ backed up from {backup.bundle}; restored into {directory}"
                + ("" if self.args["pki_bundle"] else ", the directory this host's sbctl uses")
            )
        lines += [
            f"+ {directory}/{f.path}  mode {f.mode:04o} root:root  sha256:{backupfile.short(f.sha256)}"
            for f in todo
        ]
        diff = "\n".join(lines)

        return [
            Change(
                host.name,
                self.name,
                f"restore {len(todo)} key file(s) from {shown} into {directory} (bit-for-bit, checked by SHA-256)",
                op="secureboot.restore",
                # The key material is read again from sops when applied: a saved plan holds hashes only.
                args={"directory": directory, "paths": [f.path for f in todo], "expected": expected},
                diff=diff,
                action="create" if not on_host else "update",
            )
        ]

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        failures: dict[str, str] = {}
        store = fresh_store(ctx)
        for name in sorted(changed):
            h = ctx.hosts.get(name)
            backup = load_backup(store, name) if h is not None else None
            # Where the restore wrote: the host's sbctl directory, which may not be the backed-up one.
            where = self.args["pki_bundle"] or (restore_dir(self.view(h), backup) if backup and h else None)
            failures.update(_verify_backups(ctx, {name}, where))
        return failures


@action("secureboot.restore")
def restore_keys(h: HostContext, directory: str, paths: list[str], expected: dict[str, str]) -> None:
    """Write ``paths`` of the host's backup under ``directory``; prove the whole set bit-for-bit.

    The backup is decrypted again here, so private keys never sit in a plan;
    ``expected`` (the manifest the plan showed) guards against a backup that
    changed since.
    """
    backup = load_backup(host_store(h), h.name)
    if backup is None or backup.hashes() != expected or backup.integrity_problems():
        raise RefusedError(f"{backupfile.shown_file(h.name)} changed since the plan; plan again")
    write_bundle(h, directory, [backup.files[p] for p in paths])
    check_hashes(h, directory, expected)
