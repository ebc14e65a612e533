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
--microsoft``); ``microsoft: false`` drops them, and the plan spells out what
that costs. Just before running sbctl, Setup Mode and the key hashes are
checked again on the host. After a successful enrollment the backup file
records it, which is how the next plan knows there is nothing to do.
"""

from __future__ import annotations

import json

from infratool.changes import Change
from infratool.context import HostContext
from infratool.errors import CommandFailed, RefusedError
from infratool.tasks.base import Param, PlanContext, register
from infratool.tasks.secureboot import backupfile, report
from infratool.tasks.secureboot.common import SecureBootTask, fresh_store, load_backup, require_sbctl
from infratool.tasks.secureboot.hostinfo import Bundle, HostView
from infratool.tasks.secureboot.keyfiles import host_hashes
from infratool.tasks.secureboot.keytasks import backup_problems

CONFIRM_PREFIX = "enroll-secure-boot-keys-on-"
UNATTENDED = (
    "secureboot.enroll never runs unattended (the timer, --due): it writes firmware keys and "
    "needs an operator at the console"
)
MICROSOFT_CERTS = {
    "db": (
        "Microsoft Corporation UEFI CA 2011",
        "Microsoft Windows Production PCA 2011",
        "Microsoft UEFI CA 2023",
        "Windows UEFI CA 2023",
        "Microsoft Option ROM UEFI CA 2023",
    ),
    "KEK": ("Microsoft Corporation KEK CA 2011", "Microsoft Corporation KEK 2K CA 2023"),
}
"""The certificates ``sbctl enroll-keys --microsoft`` adds (sbctl's certs/microsoft)."""


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
    }

    def validate(self) -> None:
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

    def plan(self, ctx: PlanContext) -> list[Change]:
        if ctx.options.unattended:
            for name in ctx.hosts:
                ctx.fail(name, UNATTENDED)
            return []
        return super().plan(ctx)

    def plan_one(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        view = self.view(host)
        require_sbctl(view)
        sb = view.sbctl
        if sb.status is None:
            raise RefusedError(f"enrollment refused: sbctl status failed: {sb.status_error or 'no output'}")
        bundle = view.keys()
        if bundle is None or not sb.status.get("installed"):
            raise RefusedError(
                "enrollment refused: sbctl sees no keys (create them with secureboot.create_keys, or "
                "restore them; keys in /etc/secureboot need `sbctl setup --migrate`)"
            )
        backup = load_backup(ctx.secrets(), host.name)
        if not sb.setup_mode and _enrolled_here(backup, bundle):
            return []  # these keys are enrolled already: converged
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
        command = "sbctl enroll-keys" + (" --microsoft" if microsoft else "")
        expected = bundle.hashes()

        def apply(h: HostContext) -> None:
            _recheck(h, bundle.directory, expected)
            res = h.run(command, check=False, what=command)
            if not res.ok:
                text = res.stderr.strip() or res.stdout.strip()
                first = text.splitlines()[0] if text else "no output"
                raise CommandFailed(h.name, command, res.exited, first)
            store = fresh_store(ctx)
            record = backupfile.enrollment_record(backupfile.pk_digest(expected), microsoft)
            store.write(backupfile.backup_file(h.name), {backupfile.ENROLLED: record})

        return Change(
            host.name,
            self.name,
            f"ENROLL Secure Boot keys into {host.name}'s UEFI firmware: `{command}`",
            apply,
            diff=firmware_statement(view, bundle, microsoft),
            action="run",
        )

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        failures = {}
        for name in sorted(changed):
            h = ctx.hosts.get(name)
            if h is None:
                continue
            try:
                status = json.loads(h.run("sbctl status --json", what="sbctl status").stdout)
            except ValueError:
                failures[name] = "sbctl status --json printed no JSON after enrollment"
                continue
            if status.get("setup_mode"):
                failures[name] = "the firmware is still in Setup Mode after enrollment"
            elif self.args["microsoft"] and "microsoft" not in (status.get("vendors") or []):
                failures[name] = "Microsoft's keys are not in db after enrolling with --microsoft"
        return failures


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


def firmware_statement(view: HostView, bundle: Bundle, microsoft: bool) -> str:
    """What enrollment writes to firmware, in plain words (the change's diff)."""

    def ours(var: str, what: str) -> str:
        cert = bundle.certs.get(var)
        if cert is None:
            return f"this host's {what}"
        return (
            f"this host's {what} ({cert.subject}, sha256:{backupfile.short(cert.sha256)}, "
            f"valid until {cert.not_after})"
        )

    def ms(var: str) -> str:
        if not microsoft or var not in MICROSOFT_CERTS:
            return ""
        names = MICROSOFT_CERTS[var]
        return f"\n        + Microsoft: {', '.join(names)} ({len(names)} certificates)"

    guid = (view.sbctl.status or {}).get("guid") or "?"
    lines = [
        f"Writes the UEFI Secure Boot variables of {view.name} (authenticated, in this order):",
        f"+ db  ← {ours('db', 'Database Key')}{ms('db')}",
        f"+ KEK ← {ours('KEK', 'Key Exchange Key')}{ms('KEK')}",
        f"+ PK  ← {ours('PK', 'Platform Key')}  (last: enrolling PK ends Setup Mode)",
        f"Owner GUID {guid}; keys in {bundle.directory}; backup verified: "
        f"{backupfile.shown_file(view.name)}.",
    ]
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
            "Windows will not boot. sbctl refuses if the TPM event log shows option ROMs."
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
