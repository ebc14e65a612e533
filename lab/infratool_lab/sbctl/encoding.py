"""Small helpers: atomic files, PEM blocks, digests, GUID bytes."""

from __future__ import annotations

import base64
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def _sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    """Write via a 0600 temp file renamed into place, then set the final mode."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".sbctl-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _der_to_pem(der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _pem_blocks(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield (type, body) of each PEM block, like repeated pem.Decode."""
    text = data.decode("latin-1")
    pos = 0
    while True:
        start = text.find("-----BEGIN ", pos)
        if start < 0:
            return
        head_end = text.find("-----", start + 11)
        if head_end < 0:
            return
        kind = text[start + 11 : head_end]
        end_marker = f"-----END {kind}-----"
        end = text.find(end_marker, head_end)
        if end < 0:
            return
        body = "".join(text[head_end + 5 : end].split())
        try:
            yield kind, base64.b64decode(body, validate=True)
        except ValueError:
            return
        pos = end + len(end_marker)


def _pem_to_der(data: bytes) -> bytes:
    for kind, body in _pem_blocks(data):
        if kind == "CERTIFICATE":
            return body
    raise ValueError("no pem block")


def _guid_bytes(guid: str) -> bytes:
    return uuid.UUID(guid).bytes_le
