"""One exception tree for infratool, modelled on httpx's ``_exceptions.py``.

Every error a user can meet is one of these, with a message they can act on.
Errors from the layers below (paramiko, socket, sops, subprocess) are mapped
into this tree at one place each (``remote/``, ``secrets/store.py``), so
callers never catch a library's exception.

    InfratoolError                 exit 1 unless a subclass says otherwise
    ├── InputError                 exit 3: bad inventory/playbook/policy/args;
    │   │                          carries file and line; nothing was touched
    │   └── SecretsFileError       a sops file that cannot be read as asked
    ├── HostError                  something went wrong on one host
    │   ├── HostKeyError           exit 4: unknown or changed host key
    │   ├── ConnectError           host unreachable, auth refused, timeout
    │   └── CommandFailed          a remote command exited non-zero
    ├── SecretsError               sops failed, rotation could not proceed
    │   └── LockedError            another rotation holds the lock
    ├── VerifyError                a change applied but its check failed
    └── RefusedError               a guarded action refused (e.g. enrollment)

Exit codes live here too so the CLI and the runner agree on them.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CHANGES = 2
EXIT_INPUT = 3
EXIT_HOSTKEY = 4
EXIT_STALE = 5
"""A saved plan was refused on some target: its facts changed since the plan (re-plan)."""


class InfratoolError(Exception):
    """Base of every error infratool raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(InfratoolError):
    """Bad input (inventory, playbook, policy, arguments); nothing was touched.

    ``file`` and ``line`` point at the offending spot; ``str()`` renders
    ``file:line: message`` like a compiler, so editors can jump to it.
    """

    exit_code = EXIT_INPUT

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None):
        self.file = str(file) if file is not None else None
        self.line = line
        super().__init__(message)

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class SecretsFileError(InputError):
    """A sops file that cannot be decrypted, is tampered with, or is malformed."""


class NoIdentityError(SecretsFileError):
    """None of the controller's age identities is a recipient of a sops file."""


class HostError(InfratoolError):
    """Something went wrong on one host; the rest of the fleet goes on."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class HostKeyError(HostError):
    """The host offered a key that is not the pinned one (or none is pinned)."""

    exit_code = EXIT_HOSTKEY


class ConnectError(HostError):
    """The host could not be reached or refused our credentials."""


class CommandFailed(HostError):
    """A remote command exited non-zero."""

    def __init__(self, host: str, what: str, exited: int, stderr: str = "") -> None:
        self.exited = exited
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(host, f"{what} failed (exit {exited}): {detail}")


class SecretsError(InfratoolError):
    """sops failed or a rotation could not proceed."""


class LockedError(SecretsError):
    """Another rotation holds the lock on this secrets file."""


class VerifyError(InfratoolError):
    """A change was applied but its verification failed."""


class RefusedError(InfratoolError):
    """A guarded action was refused because a precondition does not hold."""
