"""What a host says about Secure Boot: sbctl's status and verify output, and its key directories.

Two facts, gathered in the host's one round trip (``facts.py``):

* ``sbctl_state`` — whether ``sbctl`` is on PATH, ``sbctl version`` (0.15+),
  whether sbctl prints its "old configuration detected" notice (it then uses
  its DatabasePath, ``/etc/secureboot`` in nixpkgs' build), ``sbctl status
  --json``, ``sbctl list-enrolled-keys --json`` (hex-encoded) and, when sbctl
  sees keys, ``sbctl verify --json``. All read-only; a failure keeps the last
  line sbctl printed other than the notice (``--json`` silences errors, so
  the command is repeated without it to get the message).
* ``sbctl_bundle <dir>`` — the key files under a PKI bundle directory (the
  directory lanzaboote's ``pkiBundle`` names, holding ``GUID`` and
  ``keys/{PK,KEK,db}/``): path, mode, owner and SHA-256 of each file, and the
  three *public* certificates. Private keys never travel here, only their
  hashes.

File contents travel hex-encoded (``od``), not base64: the remote layer runs
every output through the redactor, and the base64 of a file read earlier
from the sops backup is registered there, so a base64 transport could come
back partly masked.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from infratool.errors import RefusedError
from infratool.facts import Fact, FactRequest, register

SBCTL_DIR = "/var/lib/sbctl"
"""sbctl's key directory since 0.15 (config.DefaultConfig; lanzaboote's documented pkiBundle)."""
LEGACY_DIR = "/etc/secureboot"
"""nixpkgs' sbctl.DatabasePath: sbctl uses it whenever it exists (and sbctl.conf does not)."""
UPSTREAM_LEGACY_DIR = "/usr/share/secureboot"
"""Upstream's sbctl.DatabasePath: a legacy layout infratool does not manage (migrate it)."""
OLD_CONFIG_NOTICE = "old configuration detected"
"""The start of the notice sbctl prints on every run while it uses DatabasePath."""
MIN_VERSION = (0, 15)
"""The oldest sbctl infratool writes with: /var/lib/sbctl, `version`, `setup --migrate`."""
CANDIDATE_DIRS: tuple[str, ...] = (SBCTL_DIR, LEGACY_DIR)
VARIABLES = ("PK", "KEK", "db")
KEY_FILES: tuple[str, ...] = tuple(f"keys/{v}/{v}.{ext}" for v in VARIABLES for ext in ("key", "pem"))
"""The six files sbctl create-keys writes; a bundle with all of them "has keys"."""
GUID_FILE = "GUID"
BUNDLE_FILES: frozenset[str] = frozenset((GUID_FILE, *KEY_FILES))
"""Every file infratool reads from, backs up and restores into a bundle (nothing else, ever)."""
KNOWN_BUNDLES: tuple[str, ...] = (SBCTL_DIR, LEGACY_DIR)
"""The only directories a backup may name as its bundle (and a restore may write into unasked)."""

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

_BUNDLE_SCRIPT = r"""
cd {dir} 2>/dev/null || exit 0
printf 'D\t%s\n' {dir}
find GUID keys -type f -printf 'F\t%m\t%u\t%g\t%p\n' 2>/dev/null | sort
find GUID keys -type f -exec sha256sum -- {{}} + 2>/dev/null | sed 's/^/H\t/'
for v in PK KEK db; do
  if [ -f "keys/$v/$v.pem" ]; then printf 'C\t%s\t' "$v"; od -An -v -tx1 "keys/$v/$v.pem" | tr -d ' \n'; echo; fi
done
"""


@dataclass(frozen=True)
class KeyFile:
    """One file of a PKI bundle as the host has it (never its content)."""

    path: str
    """Relative to the bundle directory: ``GUID``, ``keys/db/db.key``, ..."""
    mode: int
    owner: str
    group: str
    sha256: str


@dataclass(frozen=True)
class CertInfo:
    """A public certificate of the bundle, for plans and the status report."""

    subject: str
    sha256: str
    """SHA-256 of the DER certificate (what firmware stores)."""
    not_after: str


@dataclass(frozen=True)
class Bundle:
    """A PKI bundle directory on a host (may be partial, or absent: ``exists`` False)."""

    directory: str
    exists: bool = False
    files: dict[str, KeyFile] = field(default_factory=dict)
    certs: dict[str, CertInfo] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """All six key files are there: sbctl (and lanzaboote) can sign with it."""
        return all(f in self.files for f in KEY_FILES)

    @property
    def partial(self) -> bool:
        """Some key files, not all: a half-copied or damaged bundle."""
        return any(f in self.files for f in KEY_FILES) and not self.complete

    def hashes(self) -> dict[str, str]:
        """``{relative path: sha256}`` of every file."""
        return {p: f.sha256 for p, f in self.files.items()}

    def missing(self) -> list[str]:
        """Key files that are not there."""
        return [f for f in KEY_FILES if f not in self.files]


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


def _parse_bundle(out: str, status: int) -> Bundle:
    lines = out.splitlines()
    if not lines or not lines[0].startswith("D\t"):
        return Bundle("")  # no such directory; bundle() names it
    directory = lines[0][2:]
    meta: dict[str, tuple[int, str, str]] = {}
    hashes: dict[str, str] = {}
    certs: dict[str, CertInfo] = {}
    for line in lines[1:]:
        tag, _, rest = line.partition("\t")
        if tag == "F":
            mode, owner, group, path = rest.split("\t", 3)
            meta[path] = (int(mode, 8), owner, group)
        elif tag == "H":
            digest, _, path = rest.partition("  ")
            hashes[path] = digest
        elif tag == "C":
            var, _, hexdata = rest.partition("\t")
            info = cert_info(bytes.fromhex(hexdata))
            if info is not None:
                certs[var] = info
    # Only sbctl's own files: anything else under keys/ (custom/, strays) is not the bundle's.
    files = {p: KeyFile(p, *meta[p], hashes[p]) for p in sorted(meta) if p in hashes and p in BUNDLE_FILES}
    return Bundle(directory, True, files, certs)


def cert_info(pem: bytes) -> CertInfo | None:
    """Subject, DER SHA-256 and expiry of a PEM certificate (None if it does not parse)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    not_after = cert.not_valid_after_utc.astimezone(datetime.UTC).date().isoformat()
    der = cert.public_bytes(Encoding.DER)
    return CertInfo(cert.subject.rfc4514_string(), hashlib.sha256(der).hexdigest(), not_after)


register(Fact("sbctl_state", lambda _: _STATE_SCRIPT, _parse_state))
register(Fact("sbctl_bundle", lambda d: _BUNDLE_SCRIPT.format(dir=shlex.quote(d)), _parse_bundle))


def state_request() -> FactRequest:
    """The fact request for sbctl's state."""
    return FactRequest("sbctl_state")


def bundle_requests(extra: str | None = None) -> list[FactRequest]:
    """Fact requests for the candidate bundle directories (plus ``extra``, a configured one)."""
    return [FactRequest("sbctl_bundle", d) for d in bundle_dirs(extra)]


def bundle_dirs(extra: str | None = None) -> list[str]:
    """The directories to look at for keys: sbctl's, the legacy one, and ``extra``."""
    dirs = list(CANDIDATE_DIRS)
    if extra and extra not in dirs:
        dirs.append(extra)
    return dirs


@dataclass(frozen=True)
class HostView:
    """One host's Secure Boot facts, with the rule for which directory holds its keys."""

    name: str
    sbctl: SbctlState
    bundles: dict[str, Bundle]
    """Every looked-at directory → its bundle (``exists`` False when absent)."""

    @classmethod
    def of(cls, name: str, facts: Any, extra: str | None = None) -> HostView:
        """Build the view from a host's gathered facts (``extra``: a configured bundle directory)."""
        bundles = {}
        for d in bundle_dirs(extra):
            found = facts.get("sbctl_bundle", d)
            bundles[d] = found if found.exists else Bundle(d)
        return cls(name, facts.get("sbctl_state"), bundles)

    def complete(self) -> list[Bundle]:
        """Bundles holding all six key files, sbctl's directory first."""
        return [b for b in self.bundles.values() if b.complete]

    @property
    def sbctl_dir(self) -> str | None:
        """The directory sbctl itself uses on this host (None: not one infratool manages).

        sbctl (0.15+) uses its DatabasePath whenever that exists and
        /etc/sbctl/sbctl.conf does not, and says so with the "old
        configuration detected" notice; nixpkgs builds it with DatabasePath
        ``/etc/secureboot``, upstream with ``/usr/share/secureboot/``.
        Otherwise it uses ``/var/lib/sbctl`` (a keydir set in sbctl.conf is
        not read here: pass ``pki_bundle``).
        """
        if self.sbctl.legacy:
            return LEGACY_DIR if self.bundles.get(LEGACY_DIR, Bundle(LEGACY_DIR)).exists else None
        return SBCTL_DIR

    @property
    def build(self) -> str | None:
        """Which sbctl build the host runs, when its behaviour shows it: "nixpkgs", "upstream" or None.

        Only /etc/secureboot tells them apart: nixpkgs' sbctl switches to it
        (and prints the notice), upstream's ignores it.
        """
        if not self.bundles.get(LEGACY_DIR, Bundle(LEGACY_DIR)).exists or self.sbctl.config_file:
            return None
        return "nixpkgs" if self.sbctl.legacy else "upstream"

    def keys(self, override: str | None = None) -> Bundle | None:
        """The bundle holding this host's keys (None: no keys anywhere).

        With ``override`` that directory, whatever it holds. Otherwise the
        directory sbctl uses, when it holds all key files; else the one
        complete bundle elsewhere. When two directories hold keys, identical
        ones are fine (sbctl's wins) and different ones are an error, since
        guessing could back up or enroll the wrong keys.
        """
        if override:
            return self.bundles.get(override, Bundle(override))
        found = sorted(self.complete(), key=lambda b: b.directory != self.sbctl_dir)
        if len(found) > 1:
            first = {k: found[0].files[k].sha256 for k in KEY_FILES}
            for other in found[1:]:
                if {k: other.files[k].sha256 for k in KEY_FILES} != first:
                    dirs = " and ".join(b.directory for b in found)
                    raise RefusedError(
                        f"{dirs} hold different Secure Boot keys; set pki_bundle to the one "
                        "lanzaboote and the firmware use"
                    )
        return found[0] if found else None

    def unseen_keys(self, bundle: Bundle) -> str | None:
        """Why sbctl does not see the keys in ``bundle`` (None: it does), with what to do."""
        used = self.sbctl_dir
        if used == bundle.directory:
            return None
        if used is None:
            return (
                f"sbctl uses its legacy directory {UPSTREAM_LEGACY_DIR} (it says: old configuration "
                "detected): run `sbctl setup --migrate` on the host, then plan again"
            )
        if used == LEGACY_DIR:
            return (
                f"nixpkgs' sbctl uses {LEGACY_DIR} because that directory exists (it says: old "
                f"configuration detected), and it holds no complete keys; the keys are in "
                f"{bundle.directory}. `sbctl setup --migrate` does nothing once {SBCTL_DIR}/keys "
                f"exists: move {LEGACY_DIR} aside (mv {LEGACY_DIR} {LEGACY_DIR}.old), then plan again"
            )
        if bundle.directory == LEGACY_DIR:
            return (
                f"this host's sbctl is not nixpkgs' build: it ignores {LEGACY_DIR} and uses "
                f"{SBCTL_DIR} (`sbctl setup --migrate` moves only its own legacy directory). Restore "
                f"the keys there: infratool secureboot restore {self.name} --pki-bundle {SBCTL_DIR}"
            )
        return f"sbctl uses {used}, not {bundle.directory}"

    def partial(self) -> list[Bundle]:
        """Bundles with some but not all key files."""
        return [b for b in self.bundles.values() if b.partial]
