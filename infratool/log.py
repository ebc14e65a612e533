"""Logging: structlog to stderr with secret redaction, and the audit log.

Every log event passes :func:`redact_processor`, which masks every value
registered with :data:`~infratool.hidden.REDACTOR` (and any ``Secret``), so a
secret that slips into an event — even inside an exception's text — prints as
``***``. Logs are text unless ``--log-format json`` asks for JSON lines.

The audit log is append-only JSONL (default
``~/.local/state/infratool/audit.jsonl``; ``$INFRATOOL_AUDIT_LOG`` or
``--audit-log`` override): who ran what, when, on which hosts, which changes
and the outcome — descriptions only, never values.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infratool.hidden import REDACTOR, Secret

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


def audit(record: dict[str, Any], path: Path | None = None) -> None:
    """Append one redacted record to the audit log (O_APPEND: safe across processes)."""
    target = audit_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry for the uid (containers)
        user = str(os.getuid())
    full = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "user": user,
        "controller": socket.gethostname(),
        **record,
    }
    line = json.dumps(_redact(full), sort_keys=False, default=str) + "\n"
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
