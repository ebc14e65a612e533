"""PE images: parse checks, digests, and signing/verifying with the real sbsign/sbverify."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .encoding import _sha256
from .output import _AlreadySigned, _Fail
from .runtime import _Ctx, _Key


def _check_msdos(data: bytes) -> bool:
    return data[:2] == b"MZ"


def _pe_layout(data: bytes) -> tuple[int, int, int, int]:
    """Return (checksum offset, cert dir entry offset, cert table offset, size).

    Raises ValueError with go-uefi-like reasons when the file is not PE.
    """
    if len(data) < 96:
        raise ValueError("EOF")
    if data[:2] != b"MZ":
        raise ValueError(f"unrecognized PE machine: {int.from_bytes(data[:2], 'little'):#x}")
    pe = int.from_bytes(data[0x3C:0x40], "little")
    sign = data[pe : pe + 4]
    if sign != b"PE\0\0":
        raise ValueError("invalid PE file signature: " + " ".join(f"{b:02x}" for b in sign))
    opt = pe + 24
    magic = int.from_bytes(data[opt : opt + 2], "little")
    if magic not in (0x10B, 0x20B):
        raise ValueError(f"pe: unexpected optional header magic {magic:#x}")
    cert_entry = opt + (96 if magic == 0x10B else 112) + 4 * 8
    if cert_entry + 8 > len(data):
        raise ValueError("unexpected EOF")
    cert_off = int.from_bytes(data[cert_entry : cert_entry + 4], "little")
    cert_size = int.from_bytes(data[cert_entry + 4 : cert_entry + 8], "little")
    return opt + 64, cert_entry, cert_off, cert_size


def _image_digest(data: bytes) -> bytes:
    """A digest of the image without its signatures (Authenticode's idea).

    Used only to tell whether two files are the same binary, as keys.go does
    with authenticode Hash; alignment padding before the certificate table is
    ignored so a signed copy matches its unsigned original.
    """
    checksum, cert_entry, cert_off, cert_size = _pe_layout(data)
    end = cert_off if cert_size and 0 < cert_off <= len(data) else len(data)
    body = data[:checksum] + data[checksum + 4 : cert_entry] + data[cert_entry + 8 : end]
    return _sha256(body.rstrip(b"\0"))


def _run(argv: list[str]) -> tuple[int, str]:
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise _Fail(f"sbctl emulator: {argv[0]} is not installed ({exc})") from exc
    return proc.returncode, proc.stdout + proc.stderr


def _verify_file(ctx: _Ctx, keys: dict[str, _Key], path: str) -> bool:
    """sbctl.VerifyFile: is the image signed by our db key? (real sbverify)."""
    data = ctx.read_file(path, system=False)
    try:
        _pe_layout(data)
    except ValueError as exc:
        raise _Fail(f"failed reading PE file: {exc}") from exc
    code, output = _run(["sbverify", "--cert", keys["db"].cert_path, path])
    if code == 0 and "Signature verification OK" in output:
        return True
    if "Can't open image" in output:
        raise _Fail(f"failed reading PE file: {output.strip().splitlines()[-1]}")
    return False


def _sign_file(ctx: _Ctx, keys: dict[str, _Key], file: str, output: str) -> None:
    """keys.go SignFile with a real sbsign; raises _AlreadySigned like upstream."""
    if not output:
        output = file
    if not os.path.exists(file):
        raise _Fail(f"{file} does not exist")
    mode = os.stat(file).st_mode & 0o7777
    data = ctx.read_file(file, system=False)
    try:
        in_digest = _image_digest(data)
    except ValueError as exc:
        raise _Fail(f"failed reading PE file: {exc}") from exc
    same = file == output
    if not same and os.path.exists(output):
        try:
            same = _image_digest(ctx.read_file(output, system=False)) == in_digest
        except ValueError as exc:
            raise _Fail(f"failed reading PE file: {exc}") from exc
    if os.path.exists(output) and _verify_file(ctx, keys, output) and same:
        raise _AlreadySigned
    out_dir = os.path.dirname(output) or "."
    if not os.path.isdir(out_dir):
        raise _Fail(f"open {output}: no such file or directory")
    fd, tmp = tempfile.mkstemp(prefix=".sbctl-sign-", dir=out_dir)
    os.close(fd)
    try:
        code, text = _run(
            ["sbsign", "--key", keys["db"].key_path, "--cert", keys["db"].cert_path, "--output", tmp, file]
        )
        if code != 0:
            raise _Fail(f"failed signing binary: {text.strip().splitlines()[-1]}")
        # fs.WriteFile(O_TRUNC) keeps an existing file's mode; a new file
        # gets the input's mode minus the umask.
        if os.path.exists(output):
            os.chmod(tmp, os.stat(output).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, mode & ~umask)
        os.replace(tmp, output)
    finally:
        Path(tmp).unlink(missing_ok=True)
