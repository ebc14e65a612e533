"""The readiness report: one row per host, with a verdict and the next step.

Verdicts, in the order the journey meets them (docs/secure-boot.md)::

    unreachable          the host could not be reached (or refused its host key)
    sbctl-missing        install sbctl (the generated lanzaboote module does)
    no-uefi              not booted with UEFI: Secure Boot is impossible
    keys-unclear         keys are incomplete, or two directories hold different keys
    needs-keys           secureboot.create_keys
    needs-restore        no keys on the host, but a backup of them: infratool secureboot restore
    backup-unreadable    a backup exists, but no age identity here can decrypt it: set SOPS_AGE_KEY_FILE
    needs-backup         secureboot.backup (missing, stale or damaged backup)
    ready-to-enroll      Setup Mode, keys, verified backup: secureboot-enroll.yaml
    needs-setup-mode     User Mode, Secure Boot off: reset to Setup Mode in firmware setup
    reboot-pending       our keys were enrolled; reboot (and switch Secure Boot on)
    enabled              Secure Boot on with the keys infratool enrolled
    enabled-other-keys   Secure Boot on, with keys infratool did not enroll

``ready`` is true only for ``ready-to-enroll``. ``warnings`` lists what does
not block but matters (boot files not signed with the host's db key).
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

from infratool.errors import InfratoolError
from infratool.secrets.store import SopsStore
from infratool.tasks.secureboot import backupfile
from infratool.tasks.secureboot.hostinfo import LEGACY_DIR, SBCTL_DIR, Bundle, HostView
from infratool.tasks.secureboot.keyfiles import is_private

NEXT_STEPS = {
    "unreachable": "bring the host back (see `infratool hosts --check`)",
    "sbctl-missing": "install sbctl (pkgs.sbctl; the module secureboot.lanzaboote generates adds it)",
    "no-uefi": "none: the host is not booted with UEFI, so Secure Boot is impossible",
    "keys-unclear": "look at the key directories (see detail), then back up or restore",
    "needs-keys": "run playbooks/secureboot.yaml (secureboot.create_keys)",
    "needs-restore": "restore the keys from the backup: infratool secureboot restore {host}",
    "backup-unreadable": (
        "backup present, not readable here: set SOPS_AGE_KEY_FILE to an age identity among its "
        "recipients, then look again"
    ),
    "needs-backup": "run playbooks/secureboot.yaml (secureboot.backup)",
    "ready-to-enroll": "enroll: infratool secureboot enroll {host} --confirm enroll-secure-boot-keys-on-{host}",
    "needs-setup-mode": "reset Secure Boot to Setup Mode in the firmware setup, then enroll",
    "reboot-pending": "reboot; switch Secure Boot on in the firmware setup if it stays off",
    "enabled": "nothing: Secure Boot is on with this host's keys",
    "enabled-other-keys": "to use this host's own keys: Setup Mode in the firmware setup, then enroll",
}


@dataclass
class BackupState:
    """Where the host's key backup stands."""

    file: str
    state: str
    """verified | missing | stale | undecryptable (damaged) | unreadable-here (no age identity here
    among its recipients) | restorable (keys only in the backup) | no-keys"""
    detail: str = ""


@dataclass
class HostReport:
    """One host's Secure Boot readiness (the JSON of ``infratool secureboot status``)."""

    host: str
    reachable: bool = True
    error: str | None = None
    sbctl: bool = False
    sbctl_path: str | None = None
    sbctl_version: str | None = None
    sbctl_dir: str | None = None
    sbctl_build: str | None = None
    uefi: bool | None = None
    installed: bool | None = None
    guid: str | None = None
    setup_mode: bool | None = None
    secure_boot: bool | None = None
    vendors: list[str] = field(default_factory=list)
    firmware_quirks: list[Any] = field(default_factory=list)
    pki_bundle: str | None = None
    keys_present: bool = False
    key_files: list[str] = field(default_factory=list)
    certificates: dict[str, dict[str, str]] = field(default_factory=dict)
    signed_files: list[str] = field(default_factory=list)
    unsigned_files: list[str] | None = None
    expected_unsigned: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    backup: BackupState | None = None
    enrolled: dict[str, Any] | None = None
    verdict: str = "unreachable"
    ready: bool = False
    next_step: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostReport:
        """The report again from :meth:`to_dict`'s data (as a plan carries it)."""
        values = dict(data)
        if values.get("backup") is not None:
            values["backup"] = BackupState(**values["backup"])
        return cls(**values)


def unreachable(host: str, message: str) -> HostReport:
    """The report of a host that could not be reached."""
    return HostReport(host, reachable=False, error=message, next_step=NEXT_STEPS["unreachable"])


def expected_unsigned(path: str) -> bool:
    """lanzaboote keeps kernels and initrds in EFI/nixos unsigned (its signed stub checks their hashes)."""
    return "/EFI/nixos/" in path or posixpath.basename(path).startswith("kernel-")


def build(view: HostView, store: SopsStore | None, pki_bundle: str | None = None) -> HostReport:
    """The report for one reachable host (``store`` None: backups are not looked at)."""
    sb = view.sbctl
    r = HostReport(view.name, sbctl=sb.installed, sbctl_path=sb.path, sbctl_version=sb.version)
    r.uefi = sb.uefi
    if sb.status is not None:
        r.sbctl_dir, r.sbctl_build = view.sbctl_dir, view.build
    if sb.status is not None:
        r.installed = bool(sb.status.get("installed"))
        r.guid = sb.status.get("guid") or None
        r.setup_mode, r.secure_boot = sb.setup_mode, sb.secure_boot
        r.vendors, r.firmware_quirks = sb.vendors, list(sb.status.get("firmware_quirks") or [])
    elif sb.installed:
        r.error = sb.status_error
    unclear = None
    bundle: Bundle | None = None
    try:
        bundle = view.keys(pki_bundle)
    except InfratoolError as exc:
        unclear = str(exc)
    partial = view.partial()
    if bundle is None and partial and not unclear:
        b = partial[0]
        unclear = f"incomplete keys in {b.directory} (missing {', '.join(b.missing())})"
    if bundle is not None and bundle.complete:
        r.pki_bundle, r.keys_present = bundle.directory, True
        r.key_files = sorted(bundle.files)
        r.certificates = {v: asdict(c) for v, c in bundle.certs.items()}
    _files(r, sb.verify, sb.verify_error)
    r.backup, backup = _backup(view.name, store, bundle if r.keys_present else None)
    r.enrolled = backup.enrolled if backup is not None else None
    r.verdict = _verdict(r, unclear)
    r.ready = r.verdict == "ready-to-enroll"
    r.next_step = NEXT_STEPS[r.verdict].format(host=view.name)
    if r.backup.state in ("undecryptable", "unreadable-here", "stale"):
        r.warnings.append(f"backup {r.backup.file} is {r.backup.state}: {r.backup.detail}")
    if r.verdict == "needs-backup" and r.backup.state == "stale":
        r.next_step = (
            f"the backup holds other keys: restore them (infratool secureboot restore {view.name}) "
            "or back up these with secureboot.backup replace: true"
        )
    if r.verdict == "keys-unclear" and unclear:
        r.error = unclear
    if bundle is not None and r.keys_present and sb.status is not None:
        unseen = view.unseen_keys(bundle)
        if unseen:
            r.warnings.append(f"sbctl does not see the keys in {bundle.directory}: {unseen}")
    if sb.legacy and r.sbctl_dir == LEGACY_DIR and not view.bundles.get(SBCTL_DIR, Bundle(SBCTL_DIR)).files:
        r.warnings.append(
            f"sbctl says 'old configuration detected' on every run: nixpkgs' build uses {LEGACY_DIR}. "
            f"`sbctl setup --migrate` moves the keys to {SBCTL_DIR}; then run playbooks/secureboot.yaml "
            "so the backup manifest and lanzaboote's pkiBundle follow"
        )
    if r.unsigned_files:
        r.warnings.append(
            f"{len(r.unsigned_files)} boot file(s) not signed with this host's db key: they will not "
            "start with Secure Boot on unless Microsoft signed them and Microsoft's keys are enrolled"
        )
    return r


def _files(r: HostReport, verify: list[dict[str, Any]] | None, error: str | None) -> None:
    if verify is None:
        if error:
            r.warnings.append(f"sbctl verify failed: {error}")
        return
    r.unsigned_files = []
    for entry in verify:
        name, signed = str(entry.get("file_name", "")), entry.get("is_signed")
        if signed == 1:
            r.signed_files.append(name)
        elif signed == -1:
            r.missing_files.append(name)
        elif expected_unsigned(name):
            r.expected_unsigned.append(name)
        else:
            r.unsigned_files.append(name)


def _backup(
    host: str, store: SopsStore | None, bundle: Bundle | None
) -> tuple[BackupState, backupfile.Backup | None]:
    shown = backupfile.shown_file(host)
    if store is None:
        return BackupState(shown, "unknown", "not checked"), None
    try:
        backup = backupfile.load(store, host)
    except InfratoolError as exc:
        state = "unreadable-here" if not _readable_here(store, host) else "undecryptable"
        return BackupState(shown, state, str(exc)), None
    if backup is None:
        return BackupState(shown, "missing" if bundle else "no-keys"), None
    if bundle is None:
        return BackupState(shown, "restorable", f"keys from {backup.bundle}, not on the host"), backup
    problems = backup.problems_against(bundle.hashes())
    if problems:
        return BackupState(shown, "stale", "; ".join(problems[:3])), backup
    private = sum(1 for p in backup.files if is_private(p, b""))
    return BackupState(shown, "verified", f"{len(backup.files)} files ({private} private keys)"), backup


def _readable_here(store: SopsStore, host: str) -> bool:
    """Whether one of the age identities sops finds here is a recipient of the host's backup.

    False says what is true when a backup fails to decrypt for want of a
    key: it exists, and only this machine cannot read it. Unknown (a key
    command, unreadable metadata) counts as readable: the error is then the file's.
    """
    from infratool.secrets import identity

    ids = identity.discover(store.env)
    if ids.opaque:
        return True
    try:
        listed = set(store.recipients(backupfile.backup_file(host)))
    except InfratoolError:
        return True
    return bool(ids.recipients & listed) or not listed


def _verdict(r: HostReport, unclear: str | None) -> str:
    if not r.sbctl:
        return "sbctl-missing"
    if r.uefi is False:
        return "no-uefi"
    if unclear:
        return "keys-unclear"
    if r.backup is not None and r.backup.state == "unreadable-here":
        # The backup exists; whether it holds these keys (or any that were
        # enrolled) cannot be told here, so no verdict that depends on it.
        return "backup-unreadable"
    if not r.keys_present:
        return "needs-restore" if r.backup is not None and r.backup.state == "restorable" else "needs-keys"
    ours = bool(r.enrolled) and r.backup is not None and r.backup.state == "verified"
    if r.secure_boot and not r.setup_mode:
        return "enabled" if ours else "enabled-other-keys"
    if r.backup is None or r.backup.state != "verified":
        return "needs-backup"
    if r.setup_mode:
        return "ready-to-enroll"
    return "reboot-pending" if ours else "needs-setup-mode"
