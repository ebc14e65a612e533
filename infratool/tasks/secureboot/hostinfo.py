"""What a host says about Secure Boot: its key directories, and which one holds its keys.

Two facts, gathered in the host's one round trip (``facts.py``):

* ``sbctl_state`` — what sbctl reports (status, verify, enrolled keys, its
  version and legacy notice): :mod:`infratool.tasks.secureboot.sbctlstate`.
* ``sbctl_bundle <dir>`` (here) — the key files under a PKI bundle directory (the
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

import datetime
import hashlib
import shlex
from dataclasses import dataclass, field
from typing import Any

from infratool.errors import RefusedError
from infratool.facts import Fact, FactRequest, register
from infratool.tasks.secureboot.sbctlstate import SbctlState

SBCTL_DIR = "/var/lib/sbctl"
"""sbctl's key directory since 0.15 (config.DefaultConfig; lanzaboote's documented pkiBundle)."""
LEGACY_DIR = "/etc/secureboot"
"""nixpkgs' sbctl.DatabasePath: sbctl uses it whenever it exists (and sbctl.conf does not)."""
UPSTREAM_LEGACY_DIR = "/usr/share/secureboot"
"""Upstream's sbctl.DatabasePath: a legacy layout infratool does not manage (migrate it)."""
CANDIDATE_DIRS: tuple[str, ...] = (SBCTL_DIR, LEGACY_DIR)
VARIABLES = ("PK", "KEK", "db")
KEY_FILES: tuple[str, ...] = tuple(f"keys/{v}/{v}.{ext}" for v in VARIABLES for ext in ("key", "pem"))
"""The six files sbctl create-keys writes; a bundle with all of them "has keys"."""
GUID_FILE = "GUID"
BUNDLE_FILES: frozenset[str] = frozenset((GUID_FILE, *KEY_FILES))
"""Every file infratool reads from, backs up and restores into a bundle (nothing else, ever)."""
KNOWN_BUNDLES: tuple[str, ...] = (SBCTL_DIR, LEGACY_DIR)
"""The only directories a backup may name as its bundle (and a restore may write into unasked)."""

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


register(Fact("sbctl_bundle", lambda d: _BUNDLE_SCRIPT.format(dir=shlex.quote(d)), _parse_bundle))


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
