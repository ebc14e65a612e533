"""What a failed ``sops`` call means: its exit code and stderr mapped to one error tree.

sops exit codes and stderr are mapped to :class:`SecretsFileError` (the file
is the problem: no identity, tampered, not a sops file, malformed) or
:class:`SecretsError` (anything else), with sops's message redacted.
:class:`infratool.secrets.store.SopsStore` runs sops and raises what
:func:`sops_error` returns.
"""

from __future__ import annotations

import re
from pathlib import Path

from infratool.errors import NoIdentityError, SecretsError, SecretsFileError
from infratool.secrets.secret import REDACTOR

# sops exit codes (cmd/sops/codes/codes.go) that mean "this file is not what
# it claims to be": the MAC or a value fails authentication.
_TAMPERED = {
    24: "the MAC cannot be decrypted",
    25: "an encrypted value fails authentication",
    51: "MAC mismatch",
    52: "the MAC is missing",
}
_NO_KEY_EXIT = 128


def sops_error(command: str, shown: str, config: Path, code: int, stderr: str) -> Exception:
    """The exception for sops ``command`` on the file ``shown`` exiting ``code`` with ``stderr``.

    ``shown`` is the secrets file as messages name it; ``config`` is the
    repo's ``.sops.yaml``, named when it is what sops could not read.
    """
    text = REDACTOR.redact(stderr)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else "no output"
    lowered = text.lower()
    if (
        code == _NO_KEY_EXIT
        or "failed to get the data key" in lowered
        or "could not decrypt data key" in lowered
    ):
        return NoIdentityError(
            "cannot decrypt: no matching age identity (set SOPS_AGE_KEY_FILE or "
            "SOPS_AGE_KEY to an identity that is a recipient of this file)",
            file=shown,
        )
    if code in _TAMPERED or "mac mismatch" in lowered:
        why = _TAMPERED.get(code, "MAC mismatch")
        return SecretsFileError(f"has been tampered with ({why})", file=shown)
    if "sops metadata not found" in lowered:
        return SecretsFileError("not a sops-encrypted file (no sops metadata)", file=shown)
    if "no matching creation rules" in lowered:
        return SecretsFileError(f"no creation rule in {config} matches this file", file=shown)
    if "error loading config" in lowered:
        # The repo's .sops.yaml, not the secrets file, is what sops could not read
        # (checked after the creation-rule case, which sops words the same way).
        found = re.search(r"\bline (\d+)\b", last)
        return SecretsFileError(
            f"malformed sops config: {last}",
            file=config,
            line=int(found.group(1)) if found else None,
        )
    if (
        "error unmarshalling" in lowered
        or "error unmarshaling" in lowered
        or "could not unmarshal" in lowered
        or "cannot unmarshal" in lowered
    ):
        # sops names the line ("yaml: line 6: ..."): keep it for file:line.
        found = re.search(r"\bline (\d+)\b", last)
        return SecretsFileError(
            f"malformed sops file: {last}", file=shown, line=int(found.group(1)) if found else None
        )
    if "no keys found in file" in lowered:
        return SecretsFileError("malformed sops file: its metadata lists no key to decrypt with", file=shown)
    if "parsing time" in lowered:
        return SecretsFileError(f"malformed sops file: bad sops.lastmodified ({last})", file=shown)
    if re.search(r"(major|minor|patch) number|major\.minor\.patch|version string", lowered):
        # sops parses sops.version as semver before anything else.
        return SecretsFileError(f"malformed sops file: bad sops.version ({last})", file=shown)
    panic = next((ln for ln in lines if ln.startswith("panic:")), None)
    if panic is not None:
        # sops crashes (a Go panic) on some malformed files, e.g. a bare
        # number where an ENC[...] value belongs; the panic line says what.
        return SecretsFileError(f"malformed sops file: sops crashed reading it ({panic})", file=shown)
    if "non-existent file" in lowered:
        return SecretsFileError("secrets file not found", file=shown)
    return SecretsError(f"sops {command} {shown} failed (exit {code}): {last}")
