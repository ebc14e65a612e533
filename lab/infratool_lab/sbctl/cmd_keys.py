"""Commands about keys and status: status, create-keys, list-enrolled-keys, version."""

from __future__ import annotations

import os
import sys
import uuid

from .consts import KEY_DESCRIPTIONS, VARIABLES
from .encoding import _atomic_write
from .output import _Fail
from .runtime import Opts, _Ctx, _new_file_key


def _cmd_status(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    fw = ctx.firmware()
    if not fw.uefi:
        raise _Fail("system is not booted with UEFI")
    installed = os.path.exists(ctx.config.keydir)
    guid = ""
    if installed:
        try:
            guid = ctx.guid()
        except _Fail:
            guid = ""
    status = {
        "installed": installed,
        "guid": guid,
        "setup_mode": fw.setup_mode,
        "secure_boot": fw.secure_boot,
        "vendors": fw.vendors(),
        "firmware_quirks": fw.firmware_quirks,
    }
    if ctx.opts.get("json"):
        ctx.log.json(status)
        return
    log = ctx.log
    log.print("Installed:\t")
    if installed:
        log.ok("sbctl is installed")
        if guid:
            log.print("Owner GUID:\t")
            log.println(guid)
    else:
        log.notok("sbctl is not installed")
    log.print("Setup Mode:\t")
    (log.notok if fw.setup_mode else log.ok)("Enabled" if fw.setup_mode else "Disabled")
    log.print("Secure Boot:\t")
    (log.ok if fw.secure_boot else log.notok)("Enabled" if fw.secure_boot else "Disabled")
    log.print("Vendor Keys:\t")
    log.println(" ".join(status["vendors"]) or "none")
    if fw.firmware_quirks:
        log.print("Firmware:\t")
        log.print(log.warnf("Your firmware has known quirks"))
        for q in fw.firmware_quirks:
            log.println(
                f"\t\t- {q.get('id', '')}: {q.get('name', '')} ({q.get('severity', '')})"
                f"\n\t\t  {q.get('link', '')}"
            )


def _cmd_create_keys(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    keydir = opts.get("export") or ctx.config.keydir
    guid_path = opts.get("database-path") or ctx.config.guid
    if opts.get("yk-overwrite"):
        ctx.log.warn("Overwriting Yubikey option enabled")
    os.makedirs(keydir, exist_ok=True)
    os.makedirs(os.path.dirname(guid_path) or ".", exist_ok=True)
    types = {v: "file" for v in VARIABLES}
    valid = ("file", "tpm", "yubikey")
    if opts.get("keytype") in valid:
        types = {v: opts["keytype"] for v in VARIABLES}
    else:
        for var, flag in (("PK", "pk-keytype"), ("KEK", "kek-keytype"), ("db", "db-keytype")):
            if opts.get(flag) in valid:
                types[var] = opts[flag]
    if os.path.exists(guid_path):
        owner = ctx.read_file(guid_path).decode("latin-1")
    else:
        owner = str(uuid.uuid4())
        _atomic_write(guid_path, owner.encode(), 0o644)
    ctx.log.print(f"Created Owner UUID {owner}\n")
    if all(os.path.exists(os.path.join(keydir, v)) for v in VARIABLES):
        ctx.log.ok("Secure boot keys have already been created!")
        return
    unsupported = sorted({t for t in types.values() if t != "file"})
    if unsupported:
        ctx.log.notok("")
        raise _Fail(
            "couldn't initialize secure boot: sbctl emulator: only file keys are emulated, "
            f"not {', '.join(unsupported)}"
        )
    pairs = {v: _new_file_key(KEY_DESCRIPTIONS[v]) for v in VARIABLES}
    for var in VARIABLES:  # SaveKeys: PK, KEK, db; key then certificate
        os.makedirs(os.path.join(keydir, var), exist_ok=True)
        key_pem, cert_pem = pairs[var]
        _atomic_write(os.path.join(keydir, var, f"{var}.key"), key_pem, 0o400)
        _atomic_write(os.path.join(keydir, var, f"{var}.pem"), cert_pem, 0o400)
    ctx.log.ok("")
    ctx.log.println("Secure boot keys created!")


def _cmd_list_enrolled_keys(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    """list-enrolled-keys.go: the X.509 certificates of PK, KEK and db (hashes are skipped)."""
    from cryptography import x509

    fw = ctx.firmware()
    certs: dict[str, list[bytes]] = {}
    for var, label in (("PK", "PK"), ("KEK", "KEK"), ("db", "DB")):
        found = []
        # efi.GetPK & co.: a variable (or efivarfs) that is not there reads as empty.
        for entry in fw.variables[var] if fw.uefi else []:
            if entry.kind != "x509":
                continue
            try:
                x509.load_der_x509_certificate(entry.data)
            except ValueError:
                continue  # x509.ParseCertificates failed: skipped, as upstream does
            found.append(entry.data)
        certs[label] = found
    if ctx.opts.get("json"):
        from .gocert import go_certificate

        # A Go map marshals with sorted keys; a nil slice is null.
        ctx.log.json({k: [go_certificate(d) for d in certs[k]] or None for k in sorted(certs)})
        return
    from cryptography.x509.oid import NameOID

    for label in ("PK", "KEK", "DB"):  # Go ranges over the map in random order; any order is faithful
        sys.stdout.write(f"{label}:\n")
        for der in certs[label]:
            cert = x509.load_der_x509_certificate(der)
            cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            sys.stdout.write(f"  {cns[0].value if cns else ''}\n")
    sys.stdout.flush()


def _cmd_version(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    sys.stdout.write(ctx.version_text + "\n")
