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
plan names the immutable files.

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
from infratool.tasks.secureboot import backupfile, report
from infratool.tasks.secureboot.common import SecureBootTask, host_store, read_backup, require_sbctl
from infratool.tasks.secureboot.hostinfo import (
    LIST_ENROLLED,
    MIN_VERSION,
    OLD_CONFIG_NOTICE,
    VARIABLES,
    Bundle,
    HostView,
    parse_enrolled,
)
from infratool.tasks.secureboot.keyfiles import host_hashes
from infratool.tasks.secureboot.keytasks import backup_problems
from infratool.tasks.secureboot.vendorcerts import MICROSOFT_2023_SINCE, MICROSOFT_SHA256, microsoft_certs

CONFIRM_PREFIX = "enroll-secure-boot-keys-on-"
UNATTENDED = (
    "secureboot.enroll never runs unattended (the timer, --due): it writes firmware keys and "
    "needs an operator at the console"
)
BUILTIN_VARS = ("db", "KEK")
EFIVARS = {
    "PK": "/sys/firmware/efi/efivars/PK-8be4df61-93ca-11d2-aa0d-00e098032b8c",
    "KEK": "/sys/firmware/efi/efivars/KEK-8be4df61-93ca-11d2-aa0d-00e098032b8c",
    "db": "/sys/firmware/efi/efivars/db-d719b2cb-3d3a-4596-a3bc-dad00e67656f",
}
"""The efivarfs files sbctl checks for the immutable flag (util.go EfivarFSFiles)."""


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
    from infratool.tasks.secureboot.hostinfo import parse_version

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


def _cert_label(der: bytes) -> str:
    from cryptography import x509

    digest = hashlib.sha256(der).hexdigest()
    try:
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else cert.subject.rfc4514_string()
    except ValueError:
        name = "unparsable certificate"
    return f"{name} (sha256:{backupfile.short(digest)})"


def dropped(view: HostView, bundle: Bundle, microsoft: bool, builtin: list[str]) -> dict[str, list[str]]:
    """Certificates the firmware holds now that enrollment does not write back, per variable.

    enroll-keys replaces PK, KEK and db. Ours and (with --microsoft) the
    Microsoft certificates this sbctl version enrolls come back; with
    --firmware-builtin the firmware's built-in defaults of that variable come
    back too, which only the firmware knows (so those are marked "kept if
    built in").
    """
    enrolled = view.sbctl.enrolled or {}
    version = view.sbctl.version_tuple
    ms = {c.sha256 for c in microsoft_certs(version)} if microsoft else set()
    ours = {c.sha256 for c in bundle.certs.values()}
    out: dict[str, list[str]] = {}
    for var in VARIABLES:
        lines = []
        for der in enrolled.get(var, []):
            digest = hashlib.sha256(der).hexdigest()
            if digest in ours or digest in ms:
                continue
            note = " (kept if it is one of the firmware's built-in defaults)" if var in builtin else ""
            if digest in MICROSOFT_SHA256 and not microsoft:
                note += " (Microsoft: microsoft is false)"
            lines.append(_cert_label(der) + note)
        if lines:
            out[var] = lines
    return out


def firmware_statement(
    view: HostView,
    bundle: Bundle,
    microsoft: bool,
    tpm_eventlog: bool = False,
    builtin: list[str] | None = None,
) -> str:
    """What enrollment writes to firmware, and what it drops, in plain words (the change's diff)."""
    builtin = list(builtin or [])
    version = view.sbctl.version_tuple

    def ours(var: str, what: str) -> str:
        cert = bundle.certs.get(var)
        if cert is None:
            return f"this host's {what}"
        return (
            f"this host's {what} ({cert.subject}, sha256:{backupfile.short(cert.sha256)}, "
            f"valid until {cert.not_after})"
        )

    def extra(var: str) -> str:
        out = ""
        if microsoft:
            names = [c.name for c in microsoft_certs(version) if c.var == var]
            if version is None:
                older = [c.name for c in microsoft_certs(version) if c.var == var and "2011" in c.name]
                out += (
                    f"\n        + Microsoft: {', '.join(older)} (and its 2023 certificates if sbctl ≥ 0.17)"
                )
            else:
                out += f"\n        + Microsoft: {', '.join(names)} ({len(names)} certificates)"
        if var == "db" and tpm_eventlog:
            out += "\n        + checksums of the option ROMs the TPM event log records (--tpm-eventlog)"
        if var in builtin:
            out += f"\n        + the firmware's built-in {var} certificates (--firmware-builtin, vendor-owned left out)"
        return out

    guid = (view.sbctl.status or {}).get("guid") or "?"
    shown_version = view.sbctl.version or "?"
    lines = [
        f"Writes the UEFI Secure Boot variables of {view.name} (authenticated, in this order; "
        f"sbctl {shown_version}):",
        f"+ db  ← {ours('db', 'Database Key')}{extra('db')}",
        f"+ KEK ← {ours('KEK', 'Key Exchange Key')}{extra('KEK')}",
        f"+ PK  ← {ours('PK', 'Platform Key')}  (last: enrolling PK ends Setup Mode)",
        f"Owner GUID {guid}; keys in {bundle.directory}; backup verified: "
        f"{backupfile.shown_file(view.name)}.",
    ]
    gone = dropped(view, bundle, microsoft, builtin)
    if view.sbctl.enrolled is None:
        lines.append(
            "Dropped: unknown (sbctl list-enrolled-keys --json gave nothing); KEK and db are replaced."
        )
    elif gone:
        lines.append("Dropped from the firmware (enroll-keys replaces PK, KEK and db):")
        lines += [f"- {var:<3} {label}" for var in VARIABLES for label in gone.get(var, [])]
    else:
        lines.append("Dropped from the firmware: nothing it holds now.")
    if view.sbctl.enrolled is not None:
        existing = [v for v in VARIABLES if view.sbctl.enrolled.get(v)]
        if existing:
            lines.append(
                "Immutable: the kernel marks existing efivarfs files immutable ("
                + ", ".join(EFIVARS[v] for v in existing)
                + "); --ignore-immutable lets sbctl clear the flag of each file as it writes it."
            )
    if microsoft and version is not None and version < MICROSOFT_2023_SINCE:
        lines.append(
            f"Note: sbctl {shown_version} enrolls only Microsoft's 2011 certificates; 0.17 and later "
            "add the 2023 ones (Windows UEFI CA 2023, Microsoft UEFI CA 2023, Option ROM UEFI CA 2023, "
            "KEK 2K CA 2023), which newer option ROMs and boot media are signed with."
        )
    if microsoft:
        lines.append(
            "Microsoft keys: KEPT (--microsoft). Graphics/network option ROMs, Windows and shim are "
            "signed by Microsoft's CA; without it they stop loading. To drop them set microsoft: false."
        )
    else:
        lines.append(
            "Microsoft keys: NOT enrolled (microsoft: false, your explicit choice). Only files signed "
            "with this host's db key will start: option ROMs signed by Microsoft (graphics, network, "
            "storage) will not load, which can leave the machine without display or boot disk, and "
            "Windows will not boot. sbctl refuses if the TPM event log shows option ROMs, or if there "
            "is no TPM event log at all (then it cannot know), unless tpm_eventlog is set."
        )
    rep = report.build(view, None)
    for warning in rep.warnings:
        lines.append(f"Warning: {warning}: {', '.join(rep.unsigned_files or [])}")
    lines += [
        "TPM: secrets sealed to PCR 7 (systemd-cryptenroll --tpm2-pcrs=7) stop unsealing; keep the "
        "disk's recovery passphrase at hand and re-enroll the TPM after the first Secure Boot boot.",
        "Afterwards: reboot; switch Secure Boot on in the firmware setup if it stays off; "
        "`infratool secureboot status` then says 'enabled'.",
        "If it does not boot: firmware setup → restore the factory Secure Boot keys (or Setup Mode).",
    ]
    return "\n".join(lines)
