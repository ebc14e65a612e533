"""What sbctl says on a host: the ``sbctl_state`` fact and :class:`SbctlState`.

Gathered in the host's one round trip (``facts.py``): whether ``sbctl`` is on
PATH, ``sbctl version`` (0.15+), whether sbctl prints its "old configuration
detected" notice (it then uses its DatabasePath, ``/etc/secureboot`` in
nixpkgs' build), ``sbctl status --json``, ``sbctl list-enrolled-keys --json``
(hex-encoded, see :data:`LIST_ENROLLED`) and, when sbctl sees keys, ``sbctl
verify --json``. All read-only; a failure keeps the last line sbctl printed
other than the notice (``--json`` silences errors, so the command is repeated
without it to get the message).

The key directories sbctl reads are :mod:`infratool.tasks.secureboot.hostinfo`'s.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from infratool.facts import Fact, FactRequest, register

OLD_CONFIG_NOTICE = "old configuration detected"
"""The start of the notice sbctl prints on every run while it uses DatabasePath."""
MIN_VERSION = (0, 15)
"""The oldest sbctl infratool writes with: /var/lib/sbctl, `version`, `setup --migrate`."""

_STATE_SCRIPT = r"""
sb=$(command -v sbctl 2>/dev/null) || exit 0
printf 'sbctl\t%s\n' "$sb"
# `sbctl version` exists since 0.15; older releases answer "unknown command" on stdout.
if v=$(sbctl version 2>/dev/null); then printf 'version\t%s\n' "$v"; fi
[ -e /etc/sbctl/sbctl.conf ] && printf 'conf\t1\n'
# The notice goes to stderr on every run, even with --json, when sbctl uses
# its legacy DatabasePath (nixpkgs: /etc/secureboot) instead of /var/lib/sbctl.
if sbctl status --json 2>&1 >/dev/null | grep -q 'old configuration detected'; then
  printf 'legacy\t1\n'; legacy=1
else
  legacy=
fi
if out=$(sbctl status --json 2>/dev/null); then
  printf 'status\t%s\n' "$(printf '%s' "$out" | tr -d '\n')"
  if eout=$(sbctl list-enrolled-keys --json 2>/dev/null | od -An -v -tx1 | tr -d ' \n'); then
    printf 'enrolled\t%s\n' "$eout"
  fi
  case $out in
    *'"installed": true'*)
      # sbctl verify creates an empty files database when there is none
      # (ReadOrCreateFile); a read-only report leaves the host as it found it.
      db=/var/lib/sbctl/files.json
      [ -n "$legacy" ] && db=/etc/secureboot/files.db
      [ -e "$db" ] && db=
      if vout=$(sbctl verify --json 2>/dev/null); then
        printf 'verify\t%s\n' "$(printf '%s' "$vout" | tr -d '\n')"
      else
        printf 'verify-error\t%s\n' "$(sbctl verify 2>&1 >/dev/null | grep -v 'old configuration detected' | tail -n 1)"
      fi
      if [ -n "$db" ] && [ -f "$db" ] && [ ! -s "$db" ]; then rm -f -- "$db"; fi ;;
  esac
else
  printf 'status-error\t%s\n' "$(sbctl status 2>&1 >/dev/null | grep -v 'old configuration detected' | tail -n 1)"
fi
"""


@dataclass(frozen=True)
class SbctlState:
    """What ``sbctl`` reports on a host (``path`` None: sbctl is not installed)."""

    path: str | None = None
    status: dict[str, Any] | None = None
    status_error: str | None = None
    verify: list[dict[str, Any]] | None = None
    """``sbctl verify --json`` entries; None when it did not run or failed."""
    verify_error: str | None = None
    version: str | None = None
    """``sbctl version`` (None: older than 0.15, which has no such command)."""
    legacy: bool = False
    """sbctl printed "old configuration detected": it uses its DatabasePath, not /var/lib/sbctl."""
    config_file: bool = False
    """/etc/sbctl/sbctl.conf exists (it may move the key directory; pki_bundle then says where)."""
    enrolled: dict[str, list[bytes]] | None = None
    """``sbctl list-enrolled-keys --json``: DER certificates per variable (PK, KEK, db)."""

    @property
    def version_tuple(self) -> tuple[int, ...] | None:
        """(major, minor) of ``version``; None when older than 0.15 or unparsable (``unknown``)."""
        return parse_version(self.version)

    @property
    def installed(self) -> bool:
        """Whether the sbctl binary is on the host's PATH."""
        return self.path is not None

    @property
    def uefi(self) -> bool | None:
        """False when sbctl says the system is not booted with UEFI; None when unknown."""
        if self.status is not None:
            return True
        if self.status_error and "not booted with UEFI" in self.status_error:
            return False
        return None

    @property
    def setup_mode(self) -> bool | None:
        """The firmware's SetupMode (None when unknown)."""
        return None if self.status is None else bool(self.status.get("setup_mode"))

    @property
    def secure_boot(self) -> bool | None:
        """Whether Secure Boot is on (None when unknown)."""
        return None if self.status is None else bool(self.status.get("secure_boot"))

    @property
    def vendors(self) -> list[str]:
        """Vendor keys in db (``microsoft``, ``builtin-db``, ...)."""
        return list((self.status or {}).get("vendors") or [])


def _parse_state(out: str, status: int) -> SbctlState:
    values: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("\t")
        values[key] = value
    if not values.get("sbctl"):
        return SbctlState()
    return SbctlState(
        path=values["sbctl"],
        status=_json(values.get("status"), dict),
        status_error=values.get("status-error") or ("unreadable output" if "status" in values else None),
        verify=_json(values.get("verify"), list),
        verify_error=values.get("verify-error"),
        version=values.get("version") or None,
        legacy="legacy" in values,
        config_file="conf" in values,
        enrolled=parse_enrolled(values.get("enrolled")),
    )


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """``"0.18"`` → (0, 18); None for a missing or unparsable version."""
    if not text:
        return None
    parts = text.strip().lstrip("v").split(".")
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    minor = "".join(c for c in parts[1] if c.isdigit()) if parts[1][:1].isdigit() else ""
    return (int(parts[0]), int(minor)) if minor else None


LIST_ENROLLED = "sbctl list-enrolled-keys --json | od -An -v -tx1 | tr -d ' \\n'"
"""``list-enrolled-keys --json``, hex-encoded: certificates are public, but their base64 (``Raw``)
contains the lines of every PEM certificate the redactor knows, which would come back masked."""


def parse_enrolled(hextext: str | None) -> dict[str, list[bytes]] | None:
    """DER certificates per variable from ``sbctl list-enrolled-keys --json`` (hex-encoded, see LIST_ENROLLED).

    sbctl marshals Go's ``x509.Certificate``; ``Raw`` (base64 DER) is the one
    field read here, since it is what the firmware holds.
    """
    try:
        text = bytes.fromhex(hextext or "").decode()
    except ValueError:
        return None
    data = _json(text, dict)
    if data is None:
        return None
    out: dict[str, list[bytes]] = {}
    for var, key in (("PK", "PK"), ("KEK", "KEK"), ("db", "DB")):
        certs = data.get(key) or []
        try:
            out[var] = [base64.b64decode(c["Raw"]) for c in certs if isinstance(c, dict)]
        except (KeyError, TypeError, ValueError):
            return None
    return out


def _json(text: str | None, kind: type) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if value is None and kind is list:
        return []  # sbctl prints null when it checked nothing
    return value if isinstance(value, kind) else None


register(Fact("sbctl_state", lambda _: _STATE_SCRIPT, _parse_state))


def state_request() -> FactRequest:
    """The fact request for sbctl's state."""
    return FactRequest("sbctl_state")
