"""What ``secureboot.enroll`` writes to firmware and what it drops, in plain words (the change's diff).

Enrolling replaces PK, KEK and db, so the plan spells out, certificate by
certificate, what the firmware holds now that does not come back, what
``--microsoft``/``--tpm-eventlog``/``--firmware-builtin`` add, and what the
operator must do afterwards. Pure functions of the :class:`HostView` the plan
read and the key :class:`Bundle`; :mod:`.enroll` puts the text in its Change.
"""

from __future__ import annotations

import hashlib

from infratool.tasks.secureboot import backupfile, report
from infratool.tasks.secureboot.hostinfo import VARIABLES, Bundle, HostView
from infratool.tasks.secureboot.vendorcerts import MICROSOFT_2023_SINCE, MICROSOFT_SHA256, microsoft_certs

EFIVARS = {
    "PK": "/sys/firmware/efi/efivars/PK-8be4df61-93ca-11d2-aa0d-00e098032b8c",
    "KEK": "/sys/firmware/efi/efivars/KEK-8be4df61-93ca-11d2-aa0d-00e098032b8c",
    "db": "/sys/firmware/efi/efivars/db-d719b2cb-3d3a-4596-a3bc-dad00e67656f",
}
"""The efivarfs files sbctl checks for the immutable flag (util.go EfivarFSFiles)."""


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
