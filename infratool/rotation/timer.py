"""The rotation timer: hardened systemd units and the equivalent NixOS module.

One source of truth: :func:`unit_sections` describes the service and the
timer as data; :func:`render_units` turns it into unit files and
:func:`render_nixos_module` into ``systemd.services`` / ``systemd.timers``
Nix, so the two can never drift apart.

The service runs ``infratool secrets rotate --due --yes`` unattended. The age
identity reaches it through ``LoadCredential=`` (a copy readable only by the
service, under ``$CREDENTIALS_DIRECTORY``), not an environment variable.

Every value the operator chooses is checked by :func:`check_options` (no
control characters, absolute normalised paths, a real time span) and written
escaped as systemd.syntax(7) and systemd.unit(7) require: ``%`` becomes
``%%`` (specifiers), ``$`` becomes ``$$`` in ``ExecStart=`` (variable
expansion), and words with blanks or quotes are double-quoted. A newline in a
value would otherwise start a new directive, and a trailing backslash would
swallow the next line.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from infratool import nixgen
from infratool.errors import InputError

SERVICE = "infratool-rotate.service"
TIMER = "infratool-rotate.timer"
CHECK_SERVICE = "infratool-secrets-check.service"
CHECK_TIMER = "infratool-secrets-check.timer"
CREDENTIAL = "sops-age-key"


@dataclass(frozen=True)
class TimerOptions:
    """What the operator chooses for the scheduled rotation."""

    flake: Path
    """The fleet repo (secrets/, playbooks/); the service's working directory."""
    inventory: Path
    """The inventory the service runs against."""
    age_key_file: Path
    on_calendar: str = "daily"
    randomized_delay: str = "1h"
    executable: str = ""
    """The infratool binary; default: the one running now."""
    check: bool = False
    """Also the daily drift check (``secrets check``): its own service and timer."""


def default_executable() -> str:
    """The infratool executable next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).with_name("infratool")
    if candidate.exists():
        return str(candidate)
    return shutil.which("infratool") or "/run/current-system/sw/bin/infratool"


# systemd.time(7) time span units, as parse_time()/parse_sec() accept them (systemd 252).
_SPAN_UNIT = (
    r"(?:usec|us|µs|μs|nsec|ns|msec|ms|seconds?|sec|s|minutes?|min|m|hours?|hr|h"
    r"|days?|d|weeks?|w|months?|M|years?|y)"
)
_TIMESPAN = re.compile(rf"\s*(?:infinity|(?:\d+(?:\.\d+)?\s*{_SPAN_UNIT}?\s*)+)\s*")
# Characters that a word in ExecStart= / ReadWritePaths= may hold without quotes.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9@+=:,./_-]+")


def _has_control(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F or 0x80 <= ord(c) < 0xA0 for c in value)


def check_value(option: str, value: str) -> None:
    """Refuse a value that could break out of its line in a unit file.

    A control character (newline, CR, tab, escape, ...) would start a new
    directive or hide one; a backslash at the end of a line continues it onto
    the next. Raises :class:`InputError` (exit 3) naming ``option``.
    """
    if _has_control(value):
        raise InputError(
            f"{option}: {value!r} contains a control character; refusing to write it into a unit"
        )
    if "\\" in value:
        raise InputError(f"{option}: {value!r} contains a backslash; refusing to write it into a unit")


def check_path(option: str, path: Path) -> None:
    """A path that goes into a unit: absolute, normalised, no control characters or backslashes."""
    text = str(path)
    check_value(option, text)
    if not path.is_absolute() or ".." in path.parts:
        raise InputError(f"{option}: {text!r} must be an absolute, normalised path")


def check_timespan(option: str, value: str) -> None:
    """Refuse anything that is not a systemd.time(7) time span such as ``1h``, ``30min``, ``2h 30m``."""
    check_value(option, value)
    if not _TIMESPAN.fullmatch(value) or not value.strip():
        raise InputError(f"{option}: {value!r} is not a systemd time span (e.g. 30s, 15min, 1h, 2h 30min)")


def check_options(opts: TimerOptions) -> None:
    """Validate everything the operator chose before it goes into a unit; exit 3 on bad input."""
    check_path("--flake", opts.flake)
    check_path("--inventory", opts.inventory)
    check_path("--age-key-file", opts.age_key_file)
    check_path("the infratool executable", Path(opts.executable or default_executable()))
    check_value("--on-calendar", opts.on_calendar)
    if "%" in opts.on_calendar or not opts.on_calendar.strip():
        raise InputError(f"--on-calendar: {opts.on_calendar!r} is not a calendar expression")
    check_timespan("--randomized-delay", opts.randomized_delay)


def escape_specifiers(value: str) -> str:
    """``%`` → ``%%``, so systemd does not expand specifiers (systemd.unit(7))."""
    return value.replace("%", "%%")


def quote_word(value: str, *, exec_line: bool = False) -> str:
    """One word for a whitespace-separated unit setting, quoted per systemd.syntax(7).

    With ``exec_line``, ``$`` is doubled too: ``ExecStart=`` expands ``$VAR``.
    """
    word = escape_specifiers(value)
    if exec_line:
        word = word.replace("$", "$$")
    if _PLAIN_WORD.fullmatch(value):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_sections(opts: TimerOptions) -> dict[str, dict[str, dict[str, list[str] | str]]]:
    """The units as ``{unit: {section: {key: value | [values]}}}``."""
    exe = opts.executable or default_executable()
    flake = str(opts.flake)
    command = [exe, "-i", str(opts.inventory), "secrets", "rotate", "--due", "--yes", "--unattended"]
    # LoadCredential=ID:PATH takes the rest of the line as the path (specifiers expanded).
    credentials = [f"{CREDENTIAL}:{escape_specifiers(str(opts.age_key_file))}"]
    service = {
        "Unit": {
            "Description": "infratool: rotate the fleet's secrets that are due",
            "Wants": "network-online.target",
            "After": "network-online.target",
        },
        "Service": {
            "Type": "oneshot",
            "ExecStart": " ".join(quote_word(w, exec_line=True) for w in command),
            # WorkingDirectory= takes the whole rest of the line, unquoted.
            "WorkingDirectory": escape_specifiers(flake),
            "LoadCredential": credentials,
            "Environment": [
                f"SOPS_AGE_KEY_FILE=%d/{CREDENTIAL}",
                "INFRATOOL_AUDIT_LOG=/var/log/infratool/audit.jsonl",
                "NO_COLOR=1",
            ],
            "LogsDirectory": "infratool",
            "UMask": "0077",
            # Sandboxing: the job needs the network (SSH), the fleet repo
            # (sops files, rotation state) and nothing else.
            "ReadWritePaths": quote_word(flake),
            "ProtectSystem": "strict",
            "ProtectHome": "read-only",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "NoNewPrivileges": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes",
            "ProtectControlGroups": "yes",
            "ProtectClock": "yes",
            "ProtectHostname": "yes",
            "ProtectProc": "invisible",
            "ProcSubset": "pid",
            "RestrictNamespaces": "yes",
            "RestrictRealtime": "yes",
            "RestrictSUIDSGID": "yes",
            "LockPersonality": "yes",
            "RemoveIPC": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
            "SystemCallArchitectures": "native",
            "SystemCallFilter": ["@system-service", "~@privileged @resources"],
            "CapabilityBoundingSet": "",
            "AmbientCapabilities": "",
            "DevicePolicy": "closed",
            "KeyringMode": "private",
            "TimeoutStartSec": "30min",
        },
    }
    timer = {
        "Unit": {"Description": "infratool: scheduled secrets rotation"},
        "Timer": {
            "OnCalendar": opts.on_calendar,
            "RandomizedDelaySec": opts.randomized_delay,
            "Persistent": "true",
            "AccuracySec": "1min",
        },
        "Install": {"WantedBy": "timers.target"},
    }
    units = {SERVICE: service, TIMER: timer}
    if opts.check:
        # The same sandbox and credential; it only reads sops and runs verify commands
        # (it takes the sops files' rotation locks, hence the same writable repo).
        check = {
            "Unit": {
                **service["Unit"],
                "Description": "infratool: check that every consumer accepts its secret",
            },
            "Service": {
                **service["Service"],
                "ExecStart": " ".join(
                    quote_word(w, exec_line=True)
                    for w in [exe, "-i", str(opts.inventory), "secrets", "check"]
                ),
            },
        }
        check_timer = {
            "Unit": {"Description": "infratool: daily drift check of the fleet's secrets"},
            "Timer": {**timer["Timer"], "OnCalendar": "daily"},
            "Install": dict(timer["Install"]),
        }
        units.update({CHECK_SERVICE: check, CHECK_TIMER: check_timer})
    return units


def render_units(opts: TimerOptions) -> dict[str, str]:
    """Unit file name → text (raises :class:`InputError` on a value unsafe for a unit)."""
    check_options(opts)
    out = {}
    for unit, sections in unit_sections(opts).items():
        lines = [f"# {unit} — generated by `infratool timer render`"]
        for section, keys in sections.items():
            lines.append(f"\n[{section}]")
            for key, value in keys.items():
                for v in value if isinstance(value, list) else [value]:
                    lines.append(f"{key}={v}")
        out[unit] = "\n".join(lines) + "\n"
    return out


def render_nixos_module(opts: TimerOptions) -> str:
    """The same service and timer as a NixOS module."""
    check_options(opts)
    units = unit_sections(opts)
    pairs = [("infratool-rotate", SERVICE, TIMER)]
    if opts.check:
        pairs.append(("infratool-secrets-check", CHECK_SERVICE, CHECK_TIMER))
    config = {}
    for name, service_name, timer_name in pairs:
        service, timer = units[service_name], units[timer_name]
        unit = service["Unit"]
        config[f"systemd.services.{name}"] = {
            "description": unit["Description"],
            "wants": [unit["Wants"]],
            "after": [unit["After"]],
            "serviceConfig": service["Service"],
        }
        config[f"systemd.timers.{name}"] = {
            "description": timer["Unit"]["Description"],
            "wantedBy": [timer["Install"]["WantedBy"]],
            "timerConfig": timer["Timer"],
        }
    return nixgen.module(config)


# -- installing the units (non-NixOS hosts) ------------------------------------------


@dataclass(frozen=True)
class UnitWrite:
    """One unit file ``timer install`` means to write, compared with what is there."""

    path: Path
    text: str
    old: str | None
    """The current content; None when there is no file yet."""
    mode: int
    """The mode to write: the existing file's (a local 0600 stays 0600), else 0644."""
    note: str = ""
    """Why the mode or the file type changes, when it does."""

    @property
    def changed(self) -> bool:
        """The file is missing or differs from the rendered unit."""
        return self.old != self.text

    @property
    def edited(self) -> bool:
        """An existing file would be replaced: it was edited locally or rendered with other options."""
        return self.old is not None and self.changed

    def diff(self) -> str:
        """A unified diff from the file on disk to the rendered unit."""
        import difflib

        return "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                self.text.splitlines(keepends=True),
                fromfile=f"{self.path} (on disk)",
                tofile=f"{self.path} (infratool timer render)",
            )
        )


def plan_install(directory: Path, units: dict[str, str]) -> list[UnitWrite]:
    """Compare the rendered ``units`` with the files in ``directory``; touches nothing."""
    import stat

    plans = []
    for name, text in units.items():
        path = directory / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            plans.append(UnitWrite(path, text, None, 0o644))
            continue
        if stat.S_ISLNK(st.st_mode):
            # Writing through the link would change a file elsewhere (a unit
            # shipped by a package, say): the link itself is replaced.
            old = path.read_text() if path.exists() else ""
            plans.append(UnitWrite(path, text, old, 0o644, f"{path} is a symlink: it becomes a file (0644)"))
            continue
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path} exists and is not a regular file; refusing to replace it")
        try:
            old = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} cannot be read: {exc}") from None
        plans.append(UnitWrite(path, text, old, stat.S_IMODE(st.st_mode) & 0o777))
    return plans


def write_unit(plan: UnitWrite) -> None:
    """Replace ``plan.path`` atomically (temp file in the same directory, fsync, rename), keeping its mode."""
    from infratool.safeopen import atomic_write

    atomic_write(plan.path, plan.text.encode(), plan.mode)
