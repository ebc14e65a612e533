"""Logging: structlog to stderr with secret redaction, and the audit log.

Every log event passes :func:`redact_processor`, which masks every value
registered with :data:`~infratool.secrets.secret.REDACTOR` (and any ``Secret``), so a
secret that slips into an event — even inside an exception's text — prints as
``***``. Logs are text unless ``--log-format json`` asks for JSON lines.

The audit log is append-only JSONL (default
``~/.local/state/infratool/audit.jsonl``; ``$INFRATOOL_AUDIT_LOG`` or
``--audit-log`` override): who ran what, when, on which hosts, which changes
and the outcome — descriptions only, never values.

The log is opened once, before anything connects (:meth:`AuditLog.open`):
``O_NOFOLLOW|O_APPEND``, created 0600 (an existing 0644 log is tightened),
and it must be a regular file — a symlink would append to its target, a FIFO
hangs the run, ``/dev/full`` fails only after the changes were applied. A run
writes a ``started`` record before its first change, so even a ``kill -9``
leaves a trace, then its outcome. A write that fails later is reported on
stderr and never changes the run's result or exit code: the hosts were
changed either way, and the operator must hear about both.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infratool.safeopen import open_regular
from infratool.secrets.secret import REDACTOR, Secret

_configured = False


def _redact(value: Any) -> Any:
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, str):
        return REDACTOR.redact(value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    if isinstance(value, BaseException):
        return REDACTOR.redact(str(value))
    return value


def redact_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor masking every registered secret in every field."""
    return {k: _redact(v) for k, v in event_dict.items()}


_settings: dict[str, Any] = {"level": logging.WARNING, "json_logs": None, "log_file": None, "verbosity": 0}


def verbosity() -> int:
    """How many ``-v`` were given (-1 for ``-q``): ``-v`` verify steps and results,
    ``-vv`` each remote command, ``-vvv`` also its output (all masked)."""
    return _settings["verbosity"]


LOG_FILE_LEVEL = logging.INFO
"""A --log-file gets at least INFO, whatever -v/-q say about stderr."""


def _min_level() -> int:
    if _settings["log_file"] is not None:
        return min(_settings["level"], LOG_FILE_LEVEL)
    return _settings["level"]


def configure(verbosity: int = 0, json_logs: bool | None = None, log_file: Path | None = None) -> None:
    """Set the level from ``-v``/``-q``, the stderr format (``json_logs``), and an optional log file.

    ``log_file`` receives every event at INFO or above as one JSON object per
    line (appended, 0600), redacted like stderr.

    structlog itself is imported and set up only when an event at or above
    the level is logged: a quiet run never pays its import (with rich's
    traceback and pygments behind it, ~20 % of a small run's start-up;
    docs/performance.md).
    """
    global _configured
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    _settings.update(level=level, json_logs=json_logs, log_file=log_file, verbosity=verbosity)
    _configured = False
    _Logger.ready = False


def json_logs() -> bool:
    """Whether stderr carries JSON lines (``--log-format json``); text otherwise, piped or not.

    Text by default even through a pipe: CI logs and ``2>&1 | less`` are read
    by people, and scripts that grep progress lines keep working; a log
    collector asks for JSON explicitly.
    """
    return bool(_settings["json_logs"])


def _setup_structlog() -> None:
    global _configured
    import structlog

    renderer = (
        structlog.processors.JSONRenderer() if json_logs() else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    if _settings["log_file"] is not None:
        processors.append(_FileWriter(Path(_settings["log_file"])))
    processors += [_stderr_gate, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_min_level()),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


class _FileWriter:
    """structlog processor appending each (already redacted) event to the --log-file as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(event_dict, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return event_dict


def _stderr_gate(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Drop, for stderr, an event that was let through only for the log file."""
    import structlog

    if _LEVELS.get(str(event_dict.get("level", "")), logging.CRITICAL) < _settings["level"]:
        raise structlog.DropEvent
    return event_dict


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Logger:
    """A structlog logger that imports structlog on the first event it must print."""

    ready = False

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        level = _LEVELS.get(method)
        if level is not None and level < _min_level():
            return _drop
        if not _Logger.ready:
            _setup_structlog()
            _Logger.ready = True
        import structlog

        return getattr(structlog.get_logger(self._name), method)


def _drop(*args: Any, **kwargs: Any) -> None:
    return None


def get_logger(name: str = "infratool") -> Any:
    """A structlog logger (structlog is loaded on the first event that gets printed)."""
    return _Logger(name)


def audit_path(explicit: Path | None = None) -> Path:
    """Where the audit log lives."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("INFRATOOL_AUDIT_LOG")
    if env:
        return Path(env)
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "infratool" / "audit.jsonl"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry for the uid (containers)
        return str(os.getuid())


class AuditLog:
    """The audit log, opened once for a command; :meth:`write` appends one redacted JSON line."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.failed = False
        """Whether a write failed (already reported on stderr)."""

    @classmethod
    def open(cls, path: Path | None = None) -> AuditLog:
        """Open (create 0600) the log at ``path``; :class:`~infratool.errors.InputError` if unusable.

        Called before any connection, so a bad ``--audit-log`` is exit 3 with
        nothing touched.
        """
        target = audit_path(path)
        with contextlib.suppress(OSError):  # an unusable parent fails in open_regular, named
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = open_regular(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600, what="audit log")
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            # Records name hosts, secrets and outcomes: the operator's eyes only.
            try:
                os.fchmod(fd, mode & 0o700)
            except OSError as exc:
                _warn(f"audit log {target} is mode {mode:04o} and cannot be tightened: {exc.strerror}")
        return cls(target, fd)

    def write(self, record: dict[str, Any]) -> bool:
        """Append ``record`` (with time, user, controller); report a failure on stderr, never raise."""
        full = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "user": _user(),
            "controller": socket.gethostname(),
            **record,
        }
        line = (json.dumps(_redact(full), sort_keys=False, default=str) + "\n").encode()
        try:
            # One write(2) of the whole line: O_APPEND keeps lines of concurrent runs whole.
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(0, f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            self.failed = True
            _warn(
                f"audit log {self.path}: cannot write the {record.get('event', 'run')} record: {exc.strerror}"
            )
            return False
        return True

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _warn(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"warning: {REDACTOR.redact(message)}", file=sys.stderr, flush=True)


def audit(record: dict[str, Any], path: Path | None = None) -> None:
    """Append one redacted record to the audit log at ``path`` (opened and closed for it)."""
    log = AuditLog.open(path)
    try:
        log.write(record)
    finally:
        log.close()
