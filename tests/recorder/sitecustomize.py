"""Test-only: record every secret value an infratool process wraps, for the canary sweep.

Put this directory on ``PYTHONPATH`` and set ``INFRATOOL_TEST_SECRET_RECORD``
to a file: every value registered with :data:`infratool.secrets.secret.REDACTOR` —
which every :class:`~infratool.secrets.secret.Secret` is, generated or read from sops —
is appended to it, hex-encoded (so the record itself never holds a value
verbatim for a sweep to trip over). Nothing in infratool knows about this;
without the variable it does nothing.
"""

from __future__ import annotations

import os

_RECORD = os.environ.get("INFRATOOL_TEST_SECRET_RECORD")

if _RECORD:
    from infratool.secrets import secret as hidden

    _register = hidden.Redactor.register

    def _recording_register(self: hidden.Redactor, value: str | bytes) -> None:
        raw = value if isinstance(value, bytes) else value.encode()
        fd = os.open(_RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, raw.hex().encode() + b"\n")  # one write per line: whole under O_APPEND
        finally:
            os.close(fd)
        _register(self, value)

    hidden.Redactor.register = _recording_register  # type: ignore[method-assign]
