"""Firmware writes (efivarfs.WriteSignedUpdate against the emulated firmware): enroll-keys and reset."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .consts import (
    _DATA_DIR,
    EFIVAR_FILES,
    IMMUTABLE_MSG,
    MICROSOFT_2011,
    MICROSOFT_2023_SINCE,
    NO_EVENTLOG_ERROR_MSG,
    OEM_GUIDS,
    OPROM_ERROR_MSG,
    SETUP_MODE_DISABLED_MSG,
    SETUP_MODE_EFIVAR,
    VARIABLES,
)
from .encoding import _pem_to_der
from .firmware import FirmwareState, SignatureEntry, _empty_vars, _esl_bytes, _parse_esl
from .output import _Fail, _os_error
from .pe import _run
from .runtime import Opts, _Ctx, _eperm, _Key

_SIGNER = {"PK": "PK", "KEK": "PK", "db": "KEK"}


def _write_variable(ctx: _Ctx, var: str, entries: list[SignatureEntry], keys: dict[str, _Key]) -> None:
    """Write one authenticated variable; the firmware checks the signer.

    In Setup Mode any write is accepted.  In User Mode PK and KEK updates must
    be signed by the enrolled PK, db updates by an enrolled KEK (or the PK);
    the firmware's EFI_SECURITY_VIOLATION reaches sbctl as EACCES.
    """
    fw = ctx.firmware()
    path = EFIVAR_FILES[var]
    if not fw.uefi:
        raise _Fail(f"open {path}: no such file or directory")
    signer = keys[_SIGNER[var]].cert_der
    if not fw.setup_mode:
        allowed = fw.variables["PK"] + (fw.variables["KEK"] if var == "db" else [])
        if not any(e.kind == "x509" and e.data == signer for e in allowed):
            raise _Fail(f"write {path}: permission denied", permission=True)
    _unset_immutable(fw, var)
    fw.variables[var] = list(entries)
    if var == "PK":
        # Enrolling a PK leaves Setup Mode; deleting it returns to Setup Mode.
        fw.setup_mode = not entries
    ctx.save_firmware()


def _unset_immutable(fw: FirmwareState, var: str) -> None:
    """go-uefi's efivarfs writer (``UnsetImmutable()``) clears the flag of the file it writes."""
    if fw.immutable(var):
        fw.cleared_immutable.append(var)


def _oem_entries(ctx: _Ctx, oem: str, var: str) -> list[SignatureEntry]:
    """certs.GetOEMCerts: the vendor certificates this sbctl version embeds (sbctl_data/)."""
    directory = _DATA_DIR / oem / var
    if not directory.is_dir():
        return []
    old = oem == "microsoft" and ctx.version < MICROSOFT_2023_SINCE
    return [
        SignatureEntry(OEM_GUIDS[oem], "x509", p.read_bytes())
        for p in sorted(directory.iterdir(), key=lambda p: p.name)
        if p.is_file() and not (old and p.stem not in MICROSOFT_2011)
    ]


def _custom_entries(ctx: _Ctx, var: str) -> list[SignatureEntry]:
    """certs.GetCustomCerts: raw files under <keydir>/custom/<var>/."""
    directory = Path(ctx.config.keydir, "custom", var)
    if not directory.is_dir():
        return []
    return [
        SignatureEntry(OEM_GUIDS["custom"], "x509", p.read_bytes())
        for p in sorted(directory.iterdir(), key=lambda p: p.name)
        if p.is_file()
    ]


def _builtin_entries(ctx: _Ctx, var: str) -> list[SignatureEntry]:
    """certs.GetBuiltinCertificates: firmware defaults minus vendor-owned certs."""
    if var not in VARIABLES:
        raise _Fail(f"{var} is an unrecognized firmware database")
    return [e for e in ctx.firmware().defaults[var] if e.owner not in OEM_GUIDS.values()]


def _check_eventlog_oprom(fw: FirmwareState) -> None:
    if not fw.tpm_eventlog:
        raise _Fail(NO_EVENTLOG_ERROR_MSG)
    if fw.option_roms:
        raise _Fail(OPROM_ERROR_MSG)


def _check_immutable(ctx: _Ctx) -> None:
    """util.CheckImmutable: warn per immutable efivarfs file, then fail (ErrImmutable).

    Files that do not exist are skipped, as upstream does; main.go prints
    ErrImmutable as the chattr advice on stdout.
    """
    fw = ctx.firmware()
    found = [var for var in VARIABLES if fw.uefi and fw.immutable(var)]
    for var in found:
        ctx.log.warn(f"File is immutable: {EFIVAR_FILES[var]}")
    if found:
        raise _Fail(IMMUTABLE_MSG, how="println")


def _key_sync(ctx: _Ctx, opts: Opts, oems: list[str]) -> None:
    """enroll-keys.go KeySync."""
    keys = ctx.key_hierarchy()
    owner = ctx.guid()
    fw = ctx.firmware()
    # --append starts from what the firmware holds, otherwise from nothing.
    state = _empty_vars()
    if opts.get("append"):
        state = {v: list(fw.variables[v]) for v in VARIABLES}

    def append(var: str, entry: SignatureEntry) -> None:
        if entry not in state[var]:
            state[var].append(entry)

    for var in ("db", "KEK", "PK"):
        append(var, SignatureEntry(owner, "x509", keys[var].cert_der))
    log = ctx.log
    for oem in oems:
        if oem == "tpm-eventlog":
            log.print("\nWith checksums from the TPM Eventlog...")
            if not fw.tpm_eventlog:
                raise _Fail("could not enroll db keys: no eventlog found")
            if not fw.option_roms:
                raise _Fail("could not find any OpROM entries in the TPM eventlog")
            for digest in dict.fromkeys(fw.option_roms):
                state["db"].append(SignatureEntry(OEM_GUIDS["tpm-eventlog"], "sha256", bytes.fromhex(digest)))
        elif oem == "microsoft":
            log.print("\nWith vendor keys from microsoft...")
            state["db"] += _oem_entries(ctx, "microsoft", "db")
            state["KEK"] += _oem_entries(ctx, "microsoft", "KEK")
        elif oem == "custom":
            log.print("\nWith custom keys...")
            state["db"] += _custom_entries(ctx, "db")
            state["KEK"] += _custom_entries(ctx, "KEK")
        elif oem == "firmware-builtin":
            log.print("\nWith vendor certificates built into the firmware...")
            for var in opts.get("firmware-builtin", []):
                try:
                    entries = _builtin_entries(ctx, var)
                except _Fail as exc:
                    raise exc.wrap("could not enroll built-in firmware keys: ") from exc
                state[var] += entries

    export = opts.get("export", "")
    if export:
        _export(ctx, keys, state, export)
        return
    partial = opts.get("partial", "")
    for var in (partial,) if partial else ("db", "KEK", "PK"):
        _write_variable(ctx, var, state[var], keys)


def _export(ctx: _Ctx, keys: dict[str, _Key], state: dict[str, list[SignatureEntry]], kind: str) -> None:
    """--export esl|auth: write {db,KEK,PK}.<kind> to the current directory."""
    if kind == "auth":
        ctx.log.print("\nExporting as auth files...")
        blobs = {v: _signed_update(ctx, v, state[v], keys) for v in ("db", "KEK", "PK")}
    else:
        ctx.log.print("\nExporting as esl files...")
        blobs = {v: _esl_bytes(state[v]) for v in ("db", "KEK", "PK")}
    for var in ("db", "KEK", "PK"):
        name = f"{var}.{kind}"
        try:
            with open(name, "wb") as handle:  # fs.WriteFile(..., 0o644) in the cwd
                handle.write(blobs[var])
        except OSError as exc:
            raise _Fail(_os_error("open", name, exc), permission=_eperm(exc)) from exc


def _signed_update(ctx: _Ctx, var: str, entries: list[SignatureEntry], keys: dict[str, _Key]) -> bytes:
    """An EFI_VARIABLE_AUTHENTICATION_2 update made by efitools' sign-efi-sig-list."""
    signer = keys[_SIGNER[var]]
    with tempfile.TemporaryDirectory(prefix="sbctl-auth-") as tmp:
        esl = os.path.join(tmp, f"{var}.esl")
        auth = os.path.join(tmp, f"{var}.auth")
        Path(esl).write_bytes(_esl_bytes(entries))
        code, text = _run(
            ["sign-efi-sig-list", "-k", signer.key_path, "-c", signer.cert_path, var, esl, auth]
        )
        if code != 0:
            raise _Fail(f"sbctl emulator: sign-efi-sig-list failed: {text.strip()}")
        return Path(auth).read_bytes()


def _cmd_enroll_keys(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    fw = ctx.firmware()
    export = opts.get("export", "")
    partial = opts.get("partial", "")
    log = ctx.log
    if not fw.uefi and not export:
        raise _Fail(f"open {SETUP_MODE_EFIVAR}: no such file or directory")
    if not fw.setup_mode and not partial and not export:
        raise _Fail(SETUP_MODE_DISABLED_MSG)
    if opts.get("custom-bytes"):
        _enroll_custom_bytes(ctx, opts["custom-bytes"], partial)
        return
    oems: list[str] = []
    if opts.get("microsoft"):
        oems.append("microsoft")
    if opts.get("tpm-eventlog"):
        oems.append("tpm-eventlog")
    if opts.get("custom"):
        oems.append("custom")
    if opts.get("firmware-builtin"):
        oems.append("firmware-builtin")
    for extra in ctx.config.db_additions:
        if extra not in oems:
            oems.append(extra)
    if not opts.get("ignore-immutable") and not export:
        _check_immutable(ctx)
    if not (opts.get("force") or opts.get("tpm-eventlog") or opts.get("microsoft") or opts.get("append")):
        _check_eventlog_oprom(fw)
    log.print("Exporting keys to EFI files..." if export else "Enrolling keys to EFI variables...")
    try:
        _key_sync(ctx, opts, oems)
    except _Fail as exc:
        log.notok("")
        raise exc.wrap("couldn't sync keys: ") from exc
    log.ok("\nExported files!" if export else "\nEnrolled keys to the EFI variables!")


def _enroll_custom_bytes(ctx: _Ctx, path: str, partial: str) -> None:
    """--custom-bytes: write a file straight into an efivar (needs --partial)."""
    log = ctx.log
    if not partial:
        log.notok("")
        raise _Fail("missing hierarchy to enroll custom bytes to (use --partial)")
    log.print("Enrolling custom bytes to EFI variables...")
    fw = ctx.firmware()
    try:
        data = ctx.read_file(path)
        if not fw.setup_mode:
            # An unauthenticated write outside Setup Mode is refused by firmware.
            raise _Fail(f"write {EFIVAR_FILES[partial]}: permission denied", permission=True)
        try:
            entries = _parse_esl(_strip_auth_header(data))
        except ValueError as exc:
            raise _Fail(f"write {EFIVAR_FILES[partial]}: invalid argument") from exc
        _unset_immutable(fw, partial)
        fw.variables[partial] = entries
        if partial == "PK":
            fw.setup_mode = not entries
        ctx.save_firmware()
    except _Fail as exc:
        log.notok("")
        raise exc.wrap(f"couldn't roll out custom bytes from {path} for hierarchy {partial}: ") from exc
    log.ok("\nEnrolled custom bytes to the EFI variables!")


def _strip_auth_header(data: bytes) -> bytes:
    """Skip an EFI_VARIABLE_AUTHENTICATION_2 header (EFI_TIME + WIN_CERTIFICATE)."""
    if len(data) >= 24 and data[16 + 6 : 16 + 8] == (0x0EF1).to_bytes(2, "little"):
        cert_len = int.from_bytes(data[16:20], "little")
        return data[16 + cert_len :]
    return data


_RESET_MESSAGES = {
    "PK": ("Removed Platform Key!", "the Platform Key"),
    "KEK": ("Removed Key Exchange Keys!", "a Key Exchange Key"),
    "db": ("Removed Signature Database!", "the Signature Database"),
}


def _cmd_reset(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    partial = opts.get("partial", "")
    cert_files = [p for p in opts.get("cert-files", "").split(";") if p] if partial else []
    var = partial or "PK"
    try:
        _reset_database(ctx, var, cert_files)
    except _Fail as exc:
        if not partial:
            raise exc.wrap("could not reset PK: ", keep=False) from exc
        raise
    done, what = _RESET_MESSAGES[var]
    ctx.log.ok(done)
    ctx.log.println(f"Use `sbctl enroll-keys` to enroll {what} again.")


def _reset_database(ctx: _Ctx, var: str, cert_paths: list[str]) -> None:
    """reset.go resetDatabase: an empty (or pruned) list, signed with our keys."""
    fw = ctx.firmware()
    entries: list[SignatureEntry] = []
    if cert_paths:
        entries = list(fw.variables[var])
        owner = ctx.guid()
        for path in cert_paths:
            try:
                buf = Path(path).read_bytes()
            except OSError as exc:
                raise _Fail(
                    f"can't read new certificate from path {path}: {_os_error('open', path, exc)}"
                ) from exc
            try:
                der = _pem_to_der(buf)
            except ValueError as exc:
                raise _Fail("no pem block") from exc
            target = SignatureEntry(owner, "x509", der)
            if target not in entries:
                same_size = any(e.kind == "x509" and len(e.data) == len(der) for e in entries)
                raise _Fail("signature data not found" if same_size else "signature list not found")
            entries.remove(target)
    keys = ctx.key_hierarchy()
    _write_variable(ctx, var, entries, keys)
