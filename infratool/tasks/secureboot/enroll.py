"""``secureboot.enroll``: write a host's keys into its UEFI firmware, behind every guard we have.

Enrolling replaces the firmware's Platform Key: done wrong (unsigned boot
files, no Microsoft CA for a GPU's option ROM, lost keys) a machine stops
booting. So this task refuses unless *all* of these hold, and says which
ones do not:

* the run is attended (``RunOptions.unattended`` — the timer — refuses);
* the host has sbctl, is booted with UEFI, and sbctl sees its keys;
* the firmware is in Setup Mode;
* ``secrets/secureboot/<host>.yaml`` decrypts to exactly the keys on the host;
* the operator typed ``enroll-secure-boot-keys-on-<host>`` in ``confirm``.

Microsoft's certificates are kept by default (``sbctl enroll-keys
--microsoft``; which ones depends on the host's sbctl version, see
:mod:`.vendorcerts`); ``microsoft: false`` drops them, and the plan spells
out what that costs. ``tpm_eventlog`` and ``firmware_builtin`` pass sbctl's
``--tpm-eventlog`` and ``--firmware-builtin``; all of it sits behind the same
typed confirmation, and the plan lists every certificate the firmware holds
now that enrollment drops (it replaces KEK and db).

Real firmware holds PK/KEK/db variables whose efivarfs files the kernel
makes immutable, and sbctl stops on them ("You need to chattr -i files in
efivarfs"). infratool passes ``--ignore-immutable`` (``-i``) instead of
running ``chattr -i`` itself: sbctl's efivarfs writer clears the flag of
exactly the files it writes, at the moment it writes them; ``chattr`` is not
part of coreutils; and the typed confirmation already covers the write. The
plan names the immutable files (the plan's words: :mod:`.statement`).

Just before running sbctl, Setup Mode and the key hashes are checked again on
the host. After a successful enrollment the backup file records it, which is
how the next plan knows there is nothing to do; ``sbctl list-enrolled-keys
--json`` then proves, certificate by certificate, what the firmware holds.
"""

from __future__ import annotations

import hashlib
import json

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.errors import CommandFailed, RefusedError
from infratool.tasks.base import Param, PlanContext, register
from infratool.tasks.secureboot import backupfile
from infratool.tasks.secureboot.common import SecureBootTask, host_store, read_backup, require_sbctl
from infratool.tasks.secureboot.hostinfo import VARIABLES, Bundle, HostView
from infratool.tasks.secureboot.keyfiles import host_hashes
from infratool.tasks.secureboot.keytasks import backup_problems
from infratool.tasks.secureboot.sbctlstate import (
    LIST_ENROLLED,
    MIN_VERSION,
    OLD_CONFIG_NOTICE,
    parse_enrolled,
)
from infratool.tasks.secureboot.statement import firmware_statement
from infratool.tasks.secureboot.vendorcerts import microsoft_certs

CONFIRM_PREFIX = "enroll-secure-boot-keys-on-"
UNATTENDED = (
    "secureboot.enroll never runs unattended (the timer, --due): it writes firmware keys and "
    "needs an operator at the console"
)
BUILTIN_VARS = ("db", "KEK")


def enroll_command(
    microsoft: bool, tpm_eventlog: bool = False, builtin: list[str] | tuple[str, ...] = ()
) -> str:
    """The ``sbctl enroll-keys`` command line for these choices (see the module docstring for ``-i``)."""
    parts = ["sbctl enroll-keys --ignore-immutable"]
    if microsoft:
        parts.append("--microsoft")
    if tpm_eventlog:
        parts.append("--tpm-eventlog")
    if builtin:
        parts.append("--firmware-builtin=" + ",".join(v for v in BUILTIN_VARS if v in builtin))
    return " ".join(parts)


def error_line(stdout: str, stderr: str) -> str:
    """The line that says why sbctl failed: its first error, never the legacy-layout notice."""
    for text in (stderr, stdout):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and OLD_CONFIG_NOTICE not in ln]
        if lines:
            return lines[0]
    return "no output"


def confirmation(host: str) -> str:
    """The phrase that confirms enrolling ``host``."""
    return CONFIRM_PREFIX + host


@register
class Enroll(SecureBootTask):
    """Enroll each confirmed host's keys into its firmware with ``sbctl enroll-keys``."""

    name = "secureboot.enroll"
    summary = "write Secure Boot keys into UEFI firmware (Setup Mode, verified backup, confirmation)"
    params = {
        "confirm": Param(
            list,
            default=list,
            items=str,
            help="one 'enroll-secure-boot-keys-on-<host>' per host to enroll (typed on purpose)",
        ),
        "microsoft": Param(
            bool,
            default=True,
            help="keep Microsoft's UEFI CAs (sbctl enroll-keys --microsoft); false drops them",
        ),
        "tpm_eventlog": Param(
            bool,
            default=False,
            help="also enroll the option-ROM checksums the TPM event log records (--tpm-eventlog)",
        ),
        "firmware_builtin": Param(
            list,
            default=list,
            items=str,
            help="keep the firmware's built-in certificates of these variables: db, KEK (--firmware-builtin)",
        ),
    }

    def validate(self) -> None:
        for i, var in enumerate(self.args["firmware_builtin"]):
            if var not in BUILTIN_VARS:
                raise self.source.error(
                    f"secureboot.enroll: firmware_builtin[{i}] must be one of {', '.join(BUILTIN_VARS)}, "
                    f"got {var!r}",
                    "firmware_builtin",
                    i,
                )
        for i, phrase in enumerate(self.args["confirm"]):
            host = phrase.removeprefix(CONFIRM_PREFIX)
            if not phrase.startswith(CONFIRM_PREFIX) or host not in self.inventory.hosts:
                raise self.source.error(
                    f"secureboot.enroll: confirm[{i}] must be '{CONFIRM_PREFIX}<host>' naming a host of "
                    f"the inventory, got {phrase!r}",
                    "confirm",
                    i,
                )

    def label(self) -> str:
        return f"secureboot.enroll{'' if self.args['microsoft'] else ' (without Microsoft keys)'}"

    def command(self) -> str:
        """The sbctl command this task runs."""
        return enroll_command(
            self.args["microsoft"], self.args["tpm_eventlog"], self.args["firmware_builtin"]
        )

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        if ctx.options.unattended:
            raise RefusedError(UNATTENDED)
        view = self.view(host)
        require_sbctl(view)
        sb = view.sbctl
        if sb.status is None:
            raise RefusedError(f"enrollment refused: sbctl status failed: {sb.status_error or 'no output'}")
        bundle = view.keys()
        unseen = view.unseen_keys(bundle) if bundle is not None else None
        if unseen:
            raise RefusedError(
                f"enrollment refused: sbctl does not see the keys in {bundle.directory}: {unseen}"
            )
        if bundle is None or not sb.status.get("installed"):
            raise RefusedError(
                "enrollment refused: sbctl sees no keys (create them with secureboot.create_keys, or "
                "restore them)"
            )
        backup = read_backup(ctx, host.name)
        if not sb.setup_mode and (_enrolled_here(backup, bundle) or _pk_is_ours(view, bundle)):
            return []  # these keys are enrolled already: converged
        if sb.version is None:
            raise RefusedError(
                "enrollment refused: this sbctl has no `sbctl version`, so it is older than "
                f"{'.'.join(map(str, MIN_VERSION))}; update it (nixpkgs' pkgs.sbctl is newer)"
            )
        refusals = []
        if not sb.setup_mode:
            refusals.append(
                f"{host.name} is not in Setup Mode (sbctl would say: Your system is not in Setup Mode!): "
                "reset Secure Boot to Setup Mode in the firmware setup first (do not clear dbx)"
            )
        problem = backup_problems(view, ctx)
        if problem:
            refusals.append(f"no verified backup of exactly these keys: {problem}")
        if confirmation(host.name) not in self.args["confirm"]:
            refusals.append(
                f"not confirmed: enrollment writes PK, KEK and db into {host.name}'s firmware, so it needs "
                f"confirm: [{confirmation(host.name)}] (or `infratool secureboot enroll {host.name} "
                f"--confirm {confirmation(host.name)}`)"
            )
        if refusals:
            raise RefusedError("enrollment refused, nothing written to firmware: " + "; ".join(refusals))
        return [self._change(host, view, bundle, ctx)]

    def _change(self, host: HostContext, view: HostView, bundle: Bundle, ctx: PlanContext) -> Change:
        microsoft = self.args["microsoft"]
        command = self.command()
        return Change(
            host.name,
            self.name,
            f"ENROLL Secure Boot keys into {host.name}'s UEFI firmware: `{command}`",
            op="secureboot.enroll",
            args={
                "command": command,
                "directory": bundle.directory,
                "expected": bundle.hashes(),
                "microsoft": microsoft,
            },
            diff=firmware_statement(
                view, bundle, microsoft, self.args["tpm_eventlog"], self.args["firmware_builtin"]
            ),
            action="run",
        )

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        failures = {}
        for name in sorted(changed):
            h = ctx.hosts.get(name)
            if h is None:
                continue
            problem = self._check_firmware(h, self._expected_certs(h))
            if problem:
                failures[name] = problem
        return failures

    def _expected_certs(self, h: HostContext) -> dict[str, str]:
        """{variable: SHA-256 of the DER certificate enrolled}: this host's keys, from its facts.

        Enrollment does not touch the key files, so the facts gathered for
        the run say what was enrolled, in a fresh process as in the planning one.
        """
        bundle = self.view(h).keys()
        return {v: c.sha256 for v, c in bundle.certs.items()} if bundle is not None else {}

    def _check_firmware(self, h: HostContext, expected: dict[str, str]) -> str | None:
        """What the firmware holds after enrollment, read back with sbctl (None: as planned)."""
        try:
            status = json.loads(h.run("sbctl status --json", what="sbctl status").stdout)
        except ValueError:
            return "sbctl status --json printed no JSON after enrollment"
        if status.get("setup_mode"):
            return "the firmware is still in Setup Mode after enrollment"
        listed = h.run(LIST_ENROLLED, check=False, what="sbctl list-enrolled-keys")
        enrolled = parse_enrolled(listed.stdout.strip()) if listed.ok else None
        if enrolled is None:
            return "sbctl list-enrolled-keys --json printed no certificates after enrollment"
        found = {v: [hashlib.sha256(d).hexdigest() for d in enrolled[v]] for v in VARIABLES}
        if expected.get("PK") and found["PK"] != [expected["PK"]]:
            got = ", ".join(backupfile.short(d) for d in found["PK"]) or "nothing"
            return (
                f"the firmware's PK is not this host's Platform Key after enrollment (sha256:"
                f"{backupfile.short(expected['PK'])} expected, firmware holds {got})"
            )
        for var in ("KEK", "db"):
            if expected.get(var) and expected[var] not in found[var]:
                return f"this host's {var} certificate is not in the firmware's {var} after enrollment"
        if self.args["microsoft"]:
            version = _version(h)
            missing = [c.name for c in microsoft_certs(version) if c.sha256 not in found[c.var]]
            if version is None:  # unknown version: the 2011 set at least
                missing = [n for n in missing if "2011" in n]
            if missing:
                return f"Microsoft's {', '.join(missing)} missing from the firmware after --microsoft"
        return None


@action("secureboot.enroll")
def enroll_keys(
    h: HostContext, command: str, directory: str, expected: dict[str, str], microsoft: bool
) -> None:
    """Re-check Setup Mode and the keys, run ``command`` (sbctl enroll-keys), record the enrollment."""
    if not _is_enroll_command(command):
        raise RefusedError(f"not an enrollment command: {command!r}")  # a plan file is data: check it
    _recheck(h, directory, expected)
    res = h.run(command, check=False, what=command)
    if not res.ok:
        raise CommandFailed(h.name, command, res.exited, error_line(res.stdout, res.stderr))
    record = backupfile.enrollment_record(backupfile.pk_digest(expected), microsoft)
    host_store(h).write(backupfile.backup_file(h.name), {backupfile.ENROLLED: record})


def _is_enroll_command(command: str) -> bool:
    """Whether ``command`` is one :func:`enroll_command` makes (and nothing else)."""
    words = command.split(" ")
    allowed = {"--ignore-immutable", "--microsoft", "--tpm-eventlog"}
    builtin = {"--firmware-builtin=" + ",".join(v) for v in (("db",), ("KEK",), ("db", "KEK"))}
    return words[:3] == ["sbctl", "enroll-keys", "--ignore-immutable"] and all(
        w in allowed or w in builtin for w in words[3:]
    )


def _version(h: HostContext) -> tuple[int, ...] | None:
    from infratool.tasks.secureboot.sbctlstate import parse_version

    return parse_version(h.run("sbctl version", check=False, what="sbctl version").stdout.strip())


def _pk_is_ours(view: HostView, bundle: Bundle) -> bool:
    """Whether the firmware's PK (list-enrolled-keys) is exactly this bundle's Platform Key."""
    enrolled = view.sbctl.enrolled
    cert = bundle.certs.get("PK")
    if enrolled is None or cert is None:
        return False
    return [hashlib.sha256(d).hexdigest() for d in enrolled["PK"]] == [cert.sha256]


def _enrolled_here(backup: backupfile.Backup | None, bundle: Bundle) -> bool:
    """Whether the backup records an enrollment of exactly the keys in ``bundle``."""
    if backup is None or not backup.enrolled:
        return False
    hashes = bundle.hashes()
    return backup.enrolled.get("pk_sha256") == backupfile.pk_digest(hashes) and not backup.problems_against(
        hashes
    )


def _recheck(h: HostContext, directory: str, expected: dict[str, str]) -> None:
    """Setup Mode and the keys, read again right before writing firmware (the plan may be old)."""
    try:
        status = json.loads(h.run("sbctl status --json", what="sbctl status").stdout)
    except ValueError:
        raise RefusedError("sbctl status --json printed no JSON; nothing written to firmware") from None
    if not status.get("setup_mode"):
        raise RefusedError("the firmware left Setup Mode since the plan; nothing written to firmware")
    if host_hashes(h, directory, sorted(expected)) != expected:
        raise RefusedError(f"the keys in {directory} changed since the plan; nothing written to firmware")
