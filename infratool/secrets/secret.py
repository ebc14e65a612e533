"""Secret values that cannot be printed by accident (after pyinfra's HiddenValue).

A :class:`Secret` renders as ``***`` through ``str``, ``repr``, ``format`` and
f-strings, so no caller has to remember to mask it. The real value comes out
only through :meth:`Secret.reveal`, at the one place it goes to a process's
stdin or a 0600 file.

Every value wrapped is also registered with :data:`REDACTOR`, which the log
processor, the plan renderer, the audit log and the CLI's error printer run
over any text they emit: a value that escapes its wrapper (say, inside a
library's exception message) is still masked.
"""

from __future__ import annotations

import threading

MASK = "***"
# Values shorter than this are not registered: masking every "1" or "on" in
# the output would make it unreadable and protects nothing.
_MIN_REDACT_LEN = 6


class Redactor:
    """A thread-safe set of secret strings, and the function that masks them."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        self._lock = threading.Lock()

    def register(self, value: str | bytes) -> None:
        """Remember ``value`` (and each of its lines) so that it is masked from now on."""
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                return
        parts = {value, value.strip(), *(line.strip() for line in value.splitlines())}
        with self._lock:
            for part in parts:
                if len(part) >= _MIN_REDACT_LEN and part not in self._values:
                    self._values.add(part)
            # Longest first, so a whole value is masked before any of its lines.
            self._ordered = sorted(self._values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Return ``text`` with every registered value replaced by ``***``."""
        for value in self._ordered:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def __contains__(self, text: str) -> bool:
        return any(v in text for v in self._ordered)

    def clear(self) -> None:
        """Forget every value (tests only)."""
        with self._lock:
            self._values.clear()
            self._ordered = []


REDACTOR = Redactor()


class Secret:
    """A string that masks itself wherever it is printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value
        REDACTOR.register(value)

    def reveal(self) -> str | bytes:
        """The real value: call only where it goes to stdin or a 0600 file."""
        return self._value

    def reveal_bytes(self) -> bytes:
        """The real value as bytes (UTF-8 for text)."""
        v = self._value
        return v if isinstance(v, bytes) else v.encode()

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # pragma: no cover - guard, not behaviour
        raise TypeError("Secret values are not picklable")
