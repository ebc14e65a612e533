"""A faithful emulator of ``sbctl`` (Foxboron/sbctl) for the lab fleet.

sbctl cannot be installed here and there is no UEFI firmware, so lab hosts get
this program as ``/usr/local/sbin/sbctl`` (see :func:`install`).  It keeps the
real key layout, flags, messages, JSON shapes and exit codes; only the
firmware (efivarfs) is replaced by a JSON file, and Authenticode signing is
done with the real ``sbsign``/``sbverify`` (sbsigntool) instead of go-uefi.

Run it as ``python -m infratool.lab.sbctl <args>``.

Paths
-----
Like real sbctl (``config.DefaultConfig``): keys in
``/var/lib/sbctl/keys/{PK,KEK,db}/{PK,KEK,db}.{key,pem}``, the owner GUID in
``/var/lib/sbctl/GUID``, the signed-files database in
``/var/lib/sbctl/files.json`` (``files.db`` only with the legacy
``/usr/share/secureboot`` layout).  ``/etc/sbctl/sbctl.conf`` and ``--config``
(YAML: ``keydir``, ``guid``, ``files_db``, ``db_additions``) are honoured.

The emulated firmware lives in ``/var/lib/sbctl-emulator/firmware.json``
(override with ``SBCTL_EMULATOR_FIRMWARE``; see :class:`FirmwareState` for
its fields).  A missing file means a UEFI machine in Setup Mode with nothing
enrolled, a TPM event log without option ROMs and the ESP at ``/boot``.

``SBCTL_EMULATOR_ROOT`` prefixes every path sbctl itself knows (its key
directory, GUID, files database, config files, efivarfs paths, the firmware
file and the state file's ``esp``), like a chroot; tests use it to run
without a lab host.  Paths the *user* gives (command-line arguments,
``--config``, ``--export``, ``ESP_PATH``/``SYSTEMD_ESP_PATH``) are used as
given.  Messages show paths as sbctl would see them (without the prefix).

ESP: real sbctl honours ``SYSTEMD_ESP_PATH``/``ESP_PATH`` and otherwise asks
``lsblk`` for a vfat GPT partition of type ESP mounted at /efi, /boot or
/boot/efi; the emulator honours the same variables and otherwise reads
``esp`` from the firmware file (``null`` or a directory that does not exist
= "failed to find EFI system partition", as when lsblk finds no mounted ESP).

Confirmed upstream (Foxboron/sbctl at commit 1b913e78, March 2026, after
release 0.18; spf13/cobra v1.8.1 and spf13/pflag v1.0.5 as pinned in its
go.mod; Foxboron/go-uefi d29549a4):

* cmd/sbctl/main.go: global flags ``--json --quiet --disable-landlock --debug
  --config``; every error exits 1; ``--json`` turns *all* logging off (errors
  too) and prints ``json.MarshalIndent(v, "", "  ")``; unknown flags print
  pflag's message and the command's usage to stderr (cobra ``SilenceErrors``,
  so no "Error:" prefix); unknown commands print cobra's
  ``unknown command "x" for "sbctl"`` (with suggestions) on stdout; the
  Setup-Mode and option-ROM messages below are copied verbatim.
* logging/logging.go: ✓/✗/‼ symbols (``[+]``/``[-]``/``[!]`` with
  ``SBCTL_UNICODE=0``), colour only on a terminal (fatih/color), ``Warn`` and
  ``Error`` on stderr, everything else on stdout, ``--quiet`` mutes stdout.
* status.go: JSON ``{"installed", "guid", "setup_mode", "secure_boot",
  "vendors", "firmware_quirks"}``; installed = the key directory exists;
  vendors = owners of db entries with a known vendor GUID (certs/certs.go:
  microsoft 77fa9abd-…, custom 88a69775-…, tpm-eventlog) plus
  ``builtin-<var>`` (certs/builtin.go); quirks are ``{id, name, link,
  severity, method}`` (quirks/quirks.go).  No UEFI: "system is not booted
  with UEFI".
* create-keys.go, backend/file.go, keys.go: RSA 4096, SHA256WithRSA,
  self-signed, serial < 2^128, valid 5 years, subject CN only ("Platform
  Key", "Key Exchange Key", "Database Key"), key PKCS#8 PEM, files mode 0400
  (not 0600), GUID file 0644 (uuid4 text, no newline); existing keys
  (keydir/PK, KEK, db present) are kept: "Secure boot keys have already been
  created!".
* enroll-keys.go: flags ``-m/--microsoft -t/--tpm-eventlog -c/--custom
  -f/--firmware-builtin[=db,KEK] --yes-this-might-brick-my-machine`` (hidden
  alias ``--yolo``) ``-i/--ignore-immutable --export [esl,auth]
  -p/--partial [PK,KEK,db] --custom-bytes -a/--append``; outside Setup Mode
  (unless --partial/--export) "Your system is not in Setup Mode! ...";
  without --microsoft/--tpm-eventlog/--yolo/--append it reads the TPM event
  log and refuses when it is missing or shows an option ROM
  (EV_EFI_BOOT_SERVICES_DRIVER); enrolls db, KEK, then PK (db signed by KEK,
  KEK and PK by PK); --export writes {db,KEK,PK}.{esl,auth} to the current
  directory.
* sign.go, sbctl.go, keys.go: ``-s/--save -o/--output``; already signed by
  our db key and unchanged → "File has already been signed <out>";
  database entries ``{"file", "output_file"}`` (database.go, a JSON map keyed
  by file, indented with 4 spaces).
* verify.go: JSON ``[{"file_name", "is_signed"}]`` with is_signed 1 signed,
  0 unsigned, -1 missing (``null`` when nothing was checked); files in the
  database first, then every MZ file on the ESP; an ESP_PATH that does not
  exist makes upstream dereference afero.Walk's nil FileInfo (a Go panic,
  exit 2), which the emulator reproduces.
* list-files.go: JSON ``[{"file", "output_file", "is_signed"}]`` where
  is_signed is a *bool* here.
* reset.go: clears PK (``-p/--partial`` clears KEK or db,
  ``-c/--cert-files`` removes single certs); needs our keys, since the
  update is signed.
* sign-all.go, remove-file.go, list-enrolled-keys.go (text output only),
  version.go are emulated too; the bundle/setup/import/export/rotate
  commands exit 1 with "not emulated".

Approximations (documented, no upstream text to copy): firmware write
refusals are reported as the kernel's EACCES ("write <efivar>: permission
denied"); go-uefi's PE parse errors are approximated; the event log is the
firmware file's ``tpm_eventlog``/``option_roms``; SecureBoot only changes on
:func:`simulate_reboot`.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

__all__ = [
    "FirmwareState",
    "SignatureEntry",
    "firmware_state_path",
    "install",
    "main",
    "read_firmware_state",
    "simulate_reboot",
    "write_firmware_state",
]

# --------------------------------------------------------------------------
# Constants copied from upstream
# --------------------------------------------------------------------------

EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DB_GUID = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
CERT_X509_GUID = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
CERT_SHA256_GUID = "c1c41626-504c-4092-aca9-41f936934328"


def _canon_guid(text: str) -> str:
    """Normalise a GUID the way go-uefi's StringToGUID + Format does."""
    raw = bytes.fromhex(text.replace("-", ""))[:16].ljust(16, b"\0")
    return str(uuid.UUID(bytes=raw))


# certs/certs.go; the eventlog GUID is malformed upstream ("OpROMIsAnnoying!"),
# go-uefi reads it as these 16 bytes.
OEM_GUIDS: dict[str, str] = {
    "microsoft": "77fa9abd-0359-4d32-bd60-28f4e78f784b",
    "tpm-eventlog": _canon_guid("4f52704f-494d-41736e-6e6f79696e6721"),
    "custom": "88a69775-5ad7-45d9-9f34-cec43e1f1989",
}
VARIABLES = ("PK", "KEK", "db")
KEY_DESCRIPTIONS = {"PK": "Platform Key", "KEK": "Key Exchange Key", "db": "Database Key"}
EFIVAR_FILES = {
    "PK": f"/sys/firmware/efi/efivars/PK-{EFI_GLOBAL_GUID}",
    "KEK": f"/sys/firmware/efi/efivars/KEK-{EFI_GLOBAL_GUID}",
    "db": f"/sys/firmware/efi/efivars/db-{EFI_IMAGE_SECURITY_DB_GUID}",
}
SETUP_MODE_EFIVAR = f"/sys/firmware/efi/efivars/SetupMode-{EFI_GLOBAL_GUID}"
DEFAULT_FIRMWARE_FILE = "/var/lib/sbctl-emulator/firmware.json"
LEGACY_DATABASE_PATH = "/usr/share/secureboot/"
CONFIG_FILE = "/etc/sbctl/sbctl.conf"
VERSION = "0.18"

_BASE_ERROR_MSG = """

There are three flags that can be used:
    --microsoft: Enroll the Microsoft OEM certificates into the signature database.
    --tpm-eventlog: Enroll OpRom checksums into the signature database (experimental!).
    --yes-this-might-brick-my-machine: Ignore this warning and continue regardless.

Please read the FAQ for more information: https://github.com/Foxboron/sbctl/wiki/FAQ#option-rom"""
OPROM_ERROR_MSG = (
    "Found OptionROM in the bootchain. This means we should not enroll keys into UEFI "
    "without some precautions." + _BASE_ERROR_MSG
)
NO_EVENTLOG_ERROR_MSG = (
    "Could not find any TPM Eventlog in the system. This means we do not know if there is "
    "any OptionROM present on the system." + _BASE_ERROR_MSG
)
SETUP_MODE_DISABLED_MSG = (
    "Your system is not in Setup Mode! Please reboot your machine and reset secure boot "
    "keys before attempting to enroll the keys."
)

# quirks/fq0001.go; the emulator cannot read DMI, the firmware file names quirks.
KNOWN_QUIRKS: dict[str, dict[str, str]] = {
    "FQ0001": {
        "id": "FQ0001",
        "name": "Defaults to executing on Secure Boot policy violation",
        "link": "https://github.com/Foxboron/sbctl/wiki/FQ0001",
        "severity": "CRITICAL",
        "method": "date",
    },
}

_DATA_DIR = Path(__file__).with_name("sbctl_data")

# --------------------------------------------------------------------------
# Errors: each carries the text sbctl would print and how main() prints it
# --------------------------------------------------------------------------


class _Fail(Exception):
    """An error that ends the command with exit 1.

    ``how`` picks main.go's branch: "error" (logging.Error, stderr),
    "println" (logging.Println, stdout) or "silent" (ErrSilent).
    ``permission`` marks errors that wrap os.ErrPermission, which main.go
    prefixes with "sbctl requires root to run: ".
    """

    def __init__(self, message: str, *, how: str = "error", permission: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.how = how
        self.permission = permission

    def wrap(self, prefix: str, *, keep: bool = True) -> _Fail:
        """Return ``fmt.Errorf(prefix + "%w"/"%v", self)``."""
        return _Fail(prefix + self.message, how=self.how, permission=self.permission and keep)


class _Exit(Exception):
    """An ``os.Exit(code)`` that skips main.go's error printing."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _FlagError(Exception):
    """A pflag parse error; cobra's FlagErrorFunc prints it with the usage."""


class _AlreadySigned(Exception):
    """keys.go's ErrAlreadySigned."""


# --------------------------------------------------------------------------
# Output (logging/logging.go)
# --------------------------------------------------------------------------


class _Log:
    """sbctl's logging package: symbols, colours, on/off and quiet switches."""

    def __init__(self, out: TextIO, err: TextIO, env: dict[str, str]) -> None:
        self.out = out
        self.err = err
        self.on = True
        self.disable_info = False
        plain = env.get("SBCTL_UNICODE") == "0"
        isatty = getattr(out, "isatty", None)
        # fatih/color decides once, from stdout alone.
        self.color = not (env.get("NO_COLOR") or env.get("TERM") == "dumb" or not (isatty and isatty()))
        self.ok_sym = self._paint("[+]" if plain else "✓", "32;1")
        self.notok_sym = self._paint("[-]" if plain else "✗", "31;1")
        self.warn_sym = self._paint("[!]" if plain else "‼", "33;1")

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _write(self, stream: TextIO, text: str) -> None:
        if self.on:
            # Flush the other stream first so interleaved output keeps its order.
            (self.err if stream is self.out else self.out).flush()
            stream.write(text)
            stream.flush()

    def print(self, text: str) -> None:
        """logging.Print: stdout, muted by --quiet and --json."""
        if not self.disable_info:
            self._write(self.out, text)

    def println(self, text: str) -> None:
        """logging.Println."""
        self.print(text + "\n")

    def ok(self, text: str) -> None:
        """logging.Ok."""
        self.print(f"{self.ok_sym} {text}\n")

    def notok(self, text: str) -> None:
        """logging.NotOk."""
        self.print(f"{self.notok_sym} {text}\n")

    def warnf(self, text: str) -> str:
        """logging.Warnf."""
        return f"{self.warn_sym} {text}\n"

    def warn(self, text: str) -> None:
        """logging.Warn: stderr, not muted by --quiet."""
        self._write(self.err, self.warnf(text))

    def error(self, text: str) -> None:
        """logging.Error: the whole line in bold red on stderr."""
        self._write(self.err, self._paint(text + "\n", "31;1"))

    def json(self, value: Any) -> None:
        """main.go JsonOut: printed even under --json, muted by --quiet."""
        self.on = True
        self.println(_go_json(value, 2))
        self.on = False


def _go_json(value: Any, indent: int, *, sort_keys: bool = False) -> str:
    """json.MarshalIndent output: Go escapes <, >, & and U+2028/9 in strings."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=sort_keys)
    for char, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _go_quote(text: str) -> str:
    """Go's %q for the plain strings that appear in flag errors."""
    return json.dumps(text, ensure_ascii=False)


def _os_error(op: str, shown_path: str, exc: OSError) -> str:
    """Format an OSError like Go's *PathError ("open /x: no such file or directory")."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{op} {shown_path}: {reason[:1].lower()}{reason[1:]}"


# --------------------------------------------------------------------------
# Emulated firmware
# --------------------------------------------------------------------------


@dataclass
class SignatureEntry:
    """One EFI_SIGNATURE_DATA: an owner GUID and an X.509 cert or a SHA-256."""

    owner: str
    kind: str  # "x509" (data = DER certificate) or "sha256" (data = 32-byte digest)
    data: bytes

    def to_json(self) -> dict[str, str]:
        """JSON form: certificates as PEM, digests as hex, for readable state files."""
        if self.kind == "x509":
            return {"owner": self.owner, "type": "x509", "cert": _der_to_pem(self.data)}
        return {"owner": self.owner, "type": "sha256", "hash": self.data.hex()}

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> SignatureEntry:
        """Parse the JSON form (``cert`` may be PEM or base64 DER)."""
        kind = obj.get("type", "x509")
        owner = _canon_guid(obj["owner"])
        if kind == "x509":
            cert = obj["cert"]
            data = _pem_to_der(cert.encode()) if "-----BEGIN" in cert else base64.b64decode(cert)
            return cls(owner, kind, data)
        if kind == "sha256":
            return cls(owner, kind, bytes.fromhex(obj["hash"]))
        raise ValueError(f"unknown signature type {kind!r}")


def _entries_from_json(value: Any) -> dict[str, list[SignatureEntry]]:
    value = value or {}
    unknown = set(value) - set(VARIABLES)
    if unknown:
        raise ValueError(f"unknown variables {sorted(unknown)}")
    return {v: [SignatureEntry.from_json(e) for e in value.get(v, [])] for v in VARIABLES}


def _empty_vars() -> dict[str, list[SignatureEntry]]:
    return {v: [] for v in VARIABLES}


@dataclass
class FirmwareState:
    """The emulated UEFI firmware, kept as JSON in the firmware file.

    ``uefi`` false emulates a BIOS boot (no efivarfs).  ``setup_mode`` and
    ``secure_boot`` are the SetupMode/SecureBoot variables;
    ``secure_boot_enabled`` is the firmware-setup switch that
    :meth:`reboot` applies.  ``variables`` holds the enrolled PK/KEK/db,
    ``defaults`` the firmware's built-in PKDefault/KEKDefault/dbDefault
    (for ``--firmware-builtin``).  ``tpm_eventlog`` says whether
    /sys/kernel/security/tpm0/binary_bios_measurements exists and
    ``option_roms`` lists the SHA-256 digests of option-ROM drivers it
    records (``true`` in JSON means one).  ``immutable_efivars`` emulates
    ``chattr +i`` on the efivarfs files.  ``firmware_quirks`` holds quirk IDs
    (e.g. "FQ0001") or full quirk objects.  ``esp`` is the ESP mount point.
    """

    uefi: bool = True
    setup_mode: bool = True
    secure_boot: bool = False
    secure_boot_enabled: bool = True
    variables: dict[str, list[SignatureEntry]] = field(default_factory=_empty_vars)
    defaults: dict[str, list[SignatureEntry]] = field(default_factory=_empty_vars)
    tpm_eventlog: bool = True
    option_roms: list[str] = field(default_factory=list)
    immutable_efivars: bool = False
    firmware_quirks: list[dict[str, str]] = field(default_factory=list)
    esp: str | None = "/boot"

    def to_json(self) -> dict[str, Any]:
        """The JSON document stored in the firmware file."""
        return {
            "uefi": self.uefi,
            "setup_mode": self.setup_mode,
            "secure_boot": self.secure_boot,
            "secure_boot_enabled": self.secure_boot_enabled,
            "variables": {v: [e.to_json() for e in self.variables[v]] for v in VARIABLES},
            "defaults": {v: [e.to_json() for e in self.defaults[v]] for v in VARIABLES},
            "tpm_eventlog": self.tpm_eventlog,
            "option_roms": list(self.option_roms),
            "immutable_efivars": self.immutable_efivars,
            "firmware_quirks": list(self.firmware_quirks),
            "esp": self.esp,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FirmwareState:
        """Parse a firmware document; unknown keys are errors (typos would mislead)."""
        known = set(cls().to_json())
        unknown = set(obj) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        roms = obj.get("option_roms", [])
        if roms is True:
            roms = [_sha256(b"infratool sbctl emulator option ROM").hex()]
        elif roms is False or roms is None:
            roms = []
        quirks = [
            dict(KNOWN_QUIRKS[q]) if isinstance(q, str) else dict(q) for q in obj.get("firmware_quirks", [])
        ]
        return cls(
            uefi=bool(obj.get("uefi", True)),
            setup_mode=bool(obj.get("setup_mode", True)),
            secure_boot=bool(obj.get("secure_boot", False)),
            secure_boot_enabled=bool(obj.get("secure_boot_enabled", True)),
            variables=_entries_from_json(obj.get("variables")),
            defaults=_entries_from_json(obj.get("defaults")),
            tpm_eventlog=bool(obj.get("tpm_eventlog", True)),
            option_roms=[str(r) for r in roms],
            immutable_efivars=bool(obj.get("immutable_efivars", False)),
            firmware_quirks=quirks,
            esp=obj.get("esp", "/boot"),
        )

    def vendors(self) -> list[str]:
        """status.go's vendor list: known owner GUIDs in db, then builtin-*."""
        by_guid = {g: name for name, g in OEM_GUIDS.items()}
        found: list[str] = []
        for entry in self.variables["db"]:
            name = by_guid.pop(entry.owner, None)
            if name:
                found.append(name)
        # certs.BuiltinSignatureOwners: one "builtin-<var>" per default
        # signature list that is fully enrolled (vendor-owned entries excluded).
        for var in ("db", "KEK", "PK"):
            defaults = [e for e in self.defaults[var] if e.owner not in OEM_GUIDS.values()]
            for group in _group_lists(defaults):
                if all(e in self.variables[var] for e in group):
                    found.append(f"builtin-{var}")
        return found

    def reboot(self) -> None:
        """What the next boot reports: Secure Boot is on in User Mode if enabled."""
        self.secure_boot = self.secure_boot_enabled and not self.setup_mode


def firmware_state_path(env: dict[str, str] | None = None) -> Path:
    """Where the firmware file is for this environment (SBCTL_EMULATOR_* aware)."""
    env = dict(os.environ) if env is None else env
    if env.get("SBCTL_EMULATOR_FIRMWARE"):
        return Path(env["SBCTL_EMULATOR_FIRMWARE"])
    return Path(env.get("SBCTL_EMULATOR_ROOT", "") + DEFAULT_FIRMWARE_FILE)


def read_firmware_state(path: Path) -> FirmwareState:
    """Load the firmware file; a missing file is a fresh machine in Setup Mode."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return FirmwareState()
    return FirmwareState.from_json(json.loads(text))


def write_firmware_state(path: Path, state: FirmwareState) -> None:
    """Store the firmware file atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(str(path), (json.dumps(state.to_json(), indent=2) + "\n").encode(), 0o644)


def simulate_reboot(path: Path) -> FirmwareState:
    """Reboot the emulated machine: SecureBoot follows Setup/User Mode."""
    state = read_firmware_state(path)
    state.reboot()
    write_firmware_state(path, state)
    return state


# --------------------------------------------------------------------------
# Small helpers: files, PEM, digests, signature lists
# --------------------------------------------------------------------------


def _sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    """Write via a 0600 temp file renamed into place, then set the final mode."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".sbctl-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _der_to_pem(der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _pem_blocks(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield (type, body) of each PEM block, like repeated pem.Decode."""
    text = data.decode("latin-1")
    pos = 0
    while True:
        start = text.find("-----BEGIN ", pos)
        if start < 0:
            return
        head_end = text.find("-----", start + 11)
        if head_end < 0:
            return
        kind = text[start + 11 : head_end]
        end_marker = f"-----END {kind}-----"
        end = text.find(end_marker, head_end)
        if end < 0:
            return
        body = "".join(text[head_end + 5 : end].split())
        try:
            yield kind, base64.b64decode(body, validate=True)
        except ValueError:
            return
        pos = end + len(end_marker)


def _pem_to_der(data: bytes) -> bytes:
    for kind, body in _pem_blocks(data):
        if kind == "CERTIFICATE":
            return body
    raise ValueError("no pem block")


def _guid_bytes(guid: str) -> bytes:
    return uuid.UUID(guid).bytes_le


def _group_lists(entries: list[SignatureEntry]) -> list[list[SignatureEntry]]:
    """Group entries into signature lists like go-uefi's Append (same type and size)."""
    groups: list[list[SignatureEntry]] = []
    for entry in entries:
        for group in groups:
            if group[0].kind == entry.kind and len(group[0].data) == len(entry.data):
                group.append(entry)
                break
        else:
            groups.append([entry])
    return groups


def _esl_bytes(entries: list[SignatureEntry]) -> bytes:
    """Serialise a variable as EFI_SIGNATURE_LISTs (UEFI spec 32.4.1)."""
    out = bytearray()
    for group in _group_lists(entries):
        sig_type = CERT_X509_GUID if group[0].kind == "x509" else CERT_SHA256_GUID
        size = 16 + len(group[0].data)
        out += _guid_bytes(sig_type)
        out += (28 + size * len(group)).to_bytes(4, "little")
        out += (0).to_bytes(4, "little") + size.to_bytes(4, "little")
        for entry in group:
            out += _guid_bytes(entry.owner) + entry.data
    return bytes(out)


def _parse_esl(data: bytes) -> list[SignatureEntry]:
    """Parse EFI_SIGNATURE_LISTs back into entries (X.509 and SHA-256 only)."""
    entries: list[SignatureEntry] = []
    pos = 0
    kinds = {CERT_X509_GUID: "x509", CERT_SHA256_GUID: "sha256"}
    while pos + 28 <= len(data):
        sig_type = str(uuid.UUID(bytes_le=data[pos : pos + 16]))
        list_size = int.from_bytes(data[pos + 16 : pos + 20], "little")
        header = int.from_bytes(data[pos + 20 : pos + 24], "little")
        size = int.from_bytes(data[pos + 24 : pos + 28], "little")
        if list_size < 28 or size < 16 or pos + list_size > len(data) or sig_type not in kinds:
            raise ValueError("couldn't read signature list")
        sig = pos + 28 + header
        while sig + size <= pos + list_size:
            owner = str(uuid.UUID(bytes_le=data[sig : sig + 16]))
            entries.append(SignatureEntry(owner, kinds[sig_type], data[sig + 16 : sig + size]))
            sig += size
        pos += list_size
    return entries


# --------------------------------------------------------------------------
# The runtime context: environment, paths, config, firmware
# --------------------------------------------------------------------------


@dataclass
class _Config:
    """config.Config: where sbctl keeps its files (host paths)."""

    keydir: str
    guid: str
    files_db: str
    db_additions: list[str] = field(default_factory=list)


@dataclass
class _Key:
    """One level of the key hierarchy as backend.FileKey sees it."""

    name: str
    key_path: str
    cert_path: str
    cert_der: bytes


class _Ctx:
    """Everything a command needs: output, paths, config and the firmware."""

    def __init__(self, env: dict[str, str], log: _Log) -> None:
        self.env = env
        self.log = log
        self.root = env.get("SBCTL_EMULATOR_ROOT", "").rstrip("/")
        self.opts: dict[str, Any] = {}
        self.config = self._mkconfig("/var/lib/sbctl")
        self._firmware: FirmwareState | None = None

    # paths ----------------------------------------------------------------
    def sys(self, path: str) -> str:
        """Host path of a path sbctl knows by itself (prefixed with the root)."""
        return self.root + path if self.root else path

    def show(self, path: str) -> str:
        """The path as sbctl would print it (root prefix removed)."""
        if self.root and (path == self.root or path.startswith(self.root + "/")):
            return path[len(self.root) :] or "/"
        return path

    def _mkconfig(self, directory: str) -> _Config:
        return _Config(
            keydir=self.sys(posixpath.join(directory, "keys")),
            guid=self.sys(posixpath.join(directory, "GUID")),
            files_db=self.sys(posixpath.join(directory, "files.json")),
        )

    def load_config(self, config_flag: str) -> None:
        """main.go's PersistentPreRunE: --config, legacy layout, sbctl.conf, default."""
        if config_flag:
            try:
                text = Path(config_flag).read_bytes()
            except OSError as exc:
                raise _Fail(_os_error("open", config_flag, exc)) from exc
            self._apply_yaml(text)
        elif os.path.exists(self.sys(LEGACY_DATABASE_PATH)) and not os.path.exists(self.sys(CONFIG_FILE)):
            self.log.error("old configuration detected. Please use `sbctl setup --migrate`")
            self.config = self._mkconfig(LEGACY_DATABASE_PATH)
            self.config.files_db = self.config.files_db.replace(".json", ".db", 1)
        elif os.path.exists(self.sys(CONFIG_FILE)):
            self._apply_yaml(Path(self.sys(CONFIG_FILE)).read_bytes())

    def _apply_yaml(self, text: bytes) -> None:
        import yaml  # only configs need it; keeps plain runs fast

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise _Fail(str(exc)) from exc
        if not isinstance(data, dict):
            raise _Fail("config: expected a mapping")
        for key in ("keydir", "guid", "files_db"):
            if isinstance(data.get(key), str):
                setattr(self.config, key, self.sys(data[key]))
        if isinstance(data.get("db_additions"), list):
            self.config.db_additions = [str(x) for x in data["db_additions"]]

    # firmware --------------------------------------------------------------
    def firmware_path(self) -> Path:
        return firmware_state_path(self.env)

    def firmware(self) -> FirmwareState:
        if self._firmware is None:
            path = self.firmware_path()
            try:
                self._firmware = read_firmware_state(path)
            except (ValueError, KeyError, TypeError) as exc:
                raise _Fail(f"sbctl emulator: invalid firmware file {path}: {exc}") from exc
        return self._firmware

    def save_firmware(self) -> None:
        write_firmware_state(self.firmware_path(), self.firmware())

    # keys ------------------------------------------------------------------
    def read_file(self, path: str, *, system: bool = True) -> bytes:
        """Read a file, failing like Go's os.ReadFile; ``system`` paths hide the root."""
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            shown = self.show(path) if system else path
            raise _Fail(_os_error("open", shown, exc), permission=_eperm(exc)) from exc

    def key_hierarchy(self) -> dict[str, _Key]:
        """backend.GetKeyHierarchy: read db, KEK, PK (in that order) or fail."""
        keys: dict[str, _Key] = {}
        for name in ("db", "KEK", "PK"):
            base = posixpath.join(self.config.keydir, name, name)
            keyb = self.read_file(base + ".key")
            pemb = self.read_file(base + ".pem")
            _check_backend(keyb)
            try:
                der = _pem_to_der(pemb)
            except ValueError as exc:
                raise _Fail("no pem block") from exc
            keys[name] = _Key(name, base + ".key", base + ".pem", der)
        return keys

    def guid(self) -> str:
        """config.GetGUID."""
        text = self.read_file(self.config.guid).decode("latin-1")
        try:
            return str(uuid.UUID(text))
        except ValueError as exc:
            raise _Fail(f"invalid UUID length: {len(text)}") from exc

    # files database -----------------------------------------------------------
    def read_files_db(self) -> dict[str, dict[str, str]]:
        """ReadFileDatabase: creates an empty database when there is none."""
        path = self.config.files_db
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(path).touch()
            data = b""
        except OSError as exc:
            raise _Fail(_os_error("open", self.show(path), exc), permission=_eperm(exc)) from exc
        if not data:
            return {}
        try:
            files = json.loads(data)
        except ValueError as exc:
            raise _Fail(f"failed to parse json: {exc}") from exc
        return {k: {"file": v["file"], "output_file": v["output_file"]} for k, v in files.items()}

    def write_files_db(self, files: dict[str, dict[str, str]]) -> None:
        _atomic_write(self.config.files_db, _go_json(files, 4, sort_keys=True).encode(), 0o644)


def _eperm(exc: OSError) -> bool:
    return isinstance(exc, PermissionError)


def _check_backend(keyb: bytes) -> None:
    """backend.GetBackendType: only file keys exist in the emulator."""
    try:
        json.loads(keyb)
    except ValueError:
        pass
    else:
        raise _Fail("sbctl emulator: yubikey keys are not emulated")
    kinds = [kind for kind, _ in _pem_blocks(keyb)]
    if not kinds:
        raise _Fail("failed to parse pem block")
    if kinds[0] == "TSS2 PRIVATE KEY":
        raise _Fail("sbctl emulator: TPM keys are not emulated")
    if kinds[0] != "PRIVATE KEY":
        raise _Fail(f"unknown file type: {kinds[0]}")


# --------------------------------------------------------------------------
# Key creation (backend/file.go)
# --------------------------------------------------------------------------


def _new_file_key(description: str) -> tuple[bytes, bytes]:
    """A 4096-bit RSA key and a 5-year self-signed certificate, as PEM."""
    import datetime
    import secrets

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    now = datetime.datetime.now(datetime.UTC)
    try:
        not_after = now.replace(year=now.year + 5)
    except ValueError:  # 29 February: Go's AddDate normalises to 1 March
        not_after = now.replace(year=now.year + 5, month=3, day=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, description)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(now)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------
# PE images: parse checks, digests, real sbsign/sbverify
# --------------------------------------------------------------------------


def _check_msdos(data: bytes) -> bool:
    return data[:2] == b"MZ"


def _pe_layout(data: bytes) -> tuple[int, int, int, int]:
    """Return (checksum offset, cert dir entry offset, cert table offset, size).

    Raises ValueError with go-uefi-like reasons when the file is not PE.
    """
    if len(data) < 96:
        raise ValueError("EOF")
    if data[:2] != b"MZ":
        raise ValueError(f"unrecognized PE machine: {int.from_bytes(data[:2], 'little'):#x}")
    pe = int.from_bytes(data[0x3C:0x40], "little")
    sign = data[pe : pe + 4]
    if sign != b"PE\0\0":
        raise ValueError("invalid PE file signature: " + " ".join(f"{b:02x}" for b in sign))
    opt = pe + 24
    magic = int.from_bytes(data[opt : opt + 2], "little")
    if magic not in (0x10B, 0x20B):
        raise ValueError(f"pe: unexpected optional header magic {magic:#x}")
    cert_entry = opt + (96 if magic == 0x10B else 112) + 4 * 8
    if cert_entry + 8 > len(data):
        raise ValueError("unexpected EOF")
    cert_off = int.from_bytes(data[cert_entry : cert_entry + 4], "little")
    cert_size = int.from_bytes(data[cert_entry + 4 : cert_entry + 8], "little")
    return opt + 64, cert_entry, cert_off, cert_size


def _image_digest(data: bytes) -> bytes:
    """A digest of the image without its signatures (Authenticode's idea).

    Used only to tell whether two files are the same binary, as keys.go does
    with authenticode Hash; alignment padding before the certificate table is
    ignored so a signed copy matches its unsigned original.
    """
    checksum, cert_entry, cert_off, cert_size = _pe_layout(data)
    end = cert_off if cert_size and 0 < cert_off <= len(data) else len(data)
    body = data[:checksum] + data[checksum + 4 : cert_entry] + data[cert_entry + 8 : end]
    return _sha256(body.rstrip(b"\0"))


def _run(argv: list[str]) -> tuple[int, str]:
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise _Fail(f"sbctl emulator: {argv[0]} is not installed ({exc})") from exc
    return proc.returncode, proc.stdout + proc.stderr


def _verify_file(ctx: _Ctx, keys: dict[str, _Key], path: str) -> bool:
    """sbctl.VerifyFile: is the image signed by our db key? (real sbverify)."""
    data = ctx.read_file(path, system=False)
    try:
        _pe_layout(data)
    except ValueError as exc:
        raise _Fail(f"failed reading PE file: {exc}") from exc
    code, output = _run(["sbverify", "--cert", keys["db"].cert_path, path])
    if code == 0 and "Signature verification OK" in output:
        return True
    if "Can't open image" in output:
        raise _Fail(f"failed reading PE file: {output.strip().splitlines()[-1]}")
    return False


def _sign_file(ctx: _Ctx, keys: dict[str, _Key], file: str, output: str) -> None:
    """keys.go SignFile with a real sbsign; raises _AlreadySigned like upstream."""
    if not output:
        output = file
    if not os.path.exists(file):
        raise _Fail(f"{file} does not exist")
    mode = os.stat(file).st_mode & 0o7777
    data = ctx.read_file(file, system=False)
    try:
        in_digest = _image_digest(data)
    except ValueError as exc:
        raise _Fail(f"failed reading PE file: {exc}") from exc
    same = file == output
    if not same and os.path.exists(output):
        try:
            same = _image_digest(ctx.read_file(output, system=False)) == in_digest
        except ValueError as exc:
            raise _Fail(f"failed reading PE file: {exc}") from exc
    if os.path.exists(output) and _verify_file(ctx, keys, output) and same:
        raise _AlreadySigned
    out_dir = os.path.dirname(output) or "."
    if not os.path.isdir(out_dir):
        raise _Fail(f"open {output}: no such file or directory")
    fd, tmp = tempfile.mkstemp(prefix=".sbctl-sign-", dir=out_dir)
    os.close(fd)
    try:
        code, text = _run(
            ["sbsign", "--key", keys["db"].key_path, "--cert", keys["db"].cert_path, "--output", tmp, file]
        )
        if code != 0:
            raise _Fail(f"failed signing binary: {text.strip().splitlines()[-1]}")
        # fs.WriteFile(O_TRUNC) keeps an existing file's mode; a new file
        # gets the input's mode minus the umask.
        if os.path.exists(output):
            os.chmod(tmp, os.stat(output).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, mode & ~umask)
        os.replace(tmp, output)
    finally:
        Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Firmware writes (efivarfs.WriteSignedUpdate against the emulated firmware)
# --------------------------------------------------------------------------

_SIGNER = {"PK": "PK", "KEK": "PK", "db": "KEK"}


def _write_variable(ctx: _Ctx, var: str, entries: list[SignatureEntry], keys: dict[str, _Key]) -> None:
    """Write one authenticated variable; the firmware checks the signer.

    In Setup Mode any write is accepted.  In User Mode PK and KEK updates must
    be signed by the enrolled PK, db updates by an enrolled KEK (or the PK);
    the firmware's EFI_SECURITY_VIOLATION reaches sbctl as EACCES.
    """
    fw = ctx.firmware()
    path = EFIVAR_FILES[var]
    if not fw.uefi:
        raise _Fail(f"open {path}: no such file or directory")
    signer = keys[_SIGNER[var]].cert_der
    if not fw.setup_mode:
        allowed = fw.variables["PK"] + (fw.variables["KEK"] if var == "db" else [])
        if not any(e.kind == "x509" and e.data == signer for e in allowed):
            raise _Fail(f"write {path}: permission denied", permission=True)
    fw.variables[var] = list(entries)
    if var == "PK":
        # Enrolling a PK leaves Setup Mode; deleting it returns to Setup Mode.
        fw.setup_mode = not entries
    ctx.save_firmware()


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------

Opts = dict[str, Any]


def _cmd_status(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    fw = ctx.firmware()
    if not fw.uefi:
        raise _Fail("system is not booted with UEFI")
    installed = os.path.exists(ctx.config.keydir)
    guid = ""
    if installed:
        try:
            guid = ctx.guid()
        except _Fail:
            guid = ""
    status = {
        "installed": installed,
        "guid": guid,
        "setup_mode": fw.setup_mode,
        "secure_boot": fw.secure_boot,
        "vendors": fw.vendors(),
        "firmware_quirks": fw.firmware_quirks,
    }
    if ctx.opts.get("json"):
        ctx.log.json(status)
        return
    log = ctx.log
    log.print("Installed:\t")
    if installed:
        log.ok("sbctl is installed")
        if guid:
            log.print("Owner GUID:\t")
            log.println(guid)
    else:
        log.notok("sbctl is not installed")
    log.print("Setup Mode:\t")
    (log.notok if fw.setup_mode else log.ok)("Enabled" if fw.setup_mode else "Disabled")
    log.print("Secure Boot:\t")
    (log.ok if fw.secure_boot else log.notok)("Enabled" if fw.secure_boot else "Disabled")
    log.print("Vendor Keys:\t")
    log.println(" ".join(status["vendors"]) or "none")
    if fw.firmware_quirks:
        log.print("Firmware:\t")
        log.print(log.warnf("Your firmware has known quirks"))
        for q in fw.firmware_quirks:
            log.println(
                f"\t\t- {q.get('id', '')}: {q.get('name', '')} ({q.get('severity', '')})"
                f"\n\t\t  {q.get('link', '')}"
            )


def _cmd_create_keys(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    keydir = opts.get("export") or ctx.config.keydir
    guid_path = opts.get("database-path") or ctx.config.guid
    if opts.get("yk-overwrite"):
        ctx.log.warn("Overwriting Yubikey option enabled")
    os.makedirs(keydir, exist_ok=True)
    os.makedirs(os.path.dirname(guid_path) or ".", exist_ok=True)
    types = {v: "file" for v in VARIABLES}
    valid = ("file", "tpm", "yubikey")
    if opts.get("keytype") in valid:
        types = {v: opts["keytype"] for v in VARIABLES}
    else:
        for var, flag in (("PK", "pk-keytype"), ("KEK", "kek-keytype"), ("db", "db-keytype")):
            if opts.get(flag) in valid:
                types[var] = opts[flag]
    if os.path.exists(guid_path):
        owner = ctx.read_file(guid_path).decode("latin-1")
    else:
        owner = str(uuid.uuid4())
        _atomic_write(guid_path, owner.encode(), 0o644)
    ctx.log.print(f"Created Owner UUID {owner}\n")
    if all(os.path.exists(os.path.join(keydir, v)) for v in VARIABLES):
        ctx.log.ok("Secure boot keys have already been created!")
        return
    unsupported = sorted({t for t in types.values() if t != "file"})
    if unsupported:
        ctx.log.notok("")
        raise _Fail(
            "couldn't initialize secure boot: sbctl emulator: only file keys are emulated, "
            f"not {', '.join(unsupported)}"
        )
    pairs = {v: _new_file_key(KEY_DESCRIPTIONS[v]) for v in VARIABLES}
    for var in VARIABLES:  # SaveKeys: PK, KEK, db; key then certificate
        os.makedirs(os.path.join(keydir, var), exist_ok=True)
        key_pem, cert_pem = pairs[var]
        _atomic_write(os.path.join(keydir, var, f"{var}.key"), key_pem, 0o400)
        _atomic_write(os.path.join(keydir, var, f"{var}.pem"), cert_pem, 0o400)
    ctx.log.ok("")
    ctx.log.println("Secure boot keys created!")


def _oem_entries(oem: str, var: str) -> list[SignatureEntry]:
    """certs.GetOEMCerts: the embedded vendor certificates (sbctl_data/)."""
    directory = _DATA_DIR / oem / var
    if not directory.is_dir():
        return []
    return [
        SignatureEntry(OEM_GUIDS[oem], "x509", p.read_bytes())
        for p in sorted(directory.iterdir(), key=lambda p: p.name)
        if p.is_file()
    ]


def _custom_entries(ctx: _Ctx, var: str) -> list[SignatureEntry]:
    """certs.GetCustomCerts: raw files under <keydir>/custom/<var>/."""
    directory = Path(ctx.config.keydir, "custom", var)
    if not directory.is_dir():
        return []
    return [
        SignatureEntry(OEM_GUIDS["custom"], "x509", p.read_bytes())
        for p in sorted(directory.iterdir(), key=lambda p: p.name)
        if p.is_file()
    ]


def _builtin_entries(ctx: _Ctx, var: str) -> list[SignatureEntry]:
    """certs.GetBuiltinCertificates: firmware defaults minus vendor-owned certs."""
    if var not in VARIABLES:
        raise _Fail(f"{var} is an unrecognized firmware database")
    return [e for e in ctx.firmware().defaults[var] if e.owner not in OEM_GUIDS.values()]


def _check_eventlog_oprom(fw: FirmwareState) -> None:
    if not fw.tpm_eventlog:
        raise _Fail(NO_EVENTLOG_ERROR_MSG)
    if fw.option_roms:
        raise _Fail(OPROM_ERROR_MSG)


def _check_immutable(ctx: _Ctx) -> None:
    """util.CheckImmutable: warn per immutable efivarfs file, then fail."""
    if ctx.firmware().immutable_efivars:
        for var in VARIABLES:
            ctx.log.warn(f"File is immutable: {EFIVAR_FILES[var]}")
        raise _Fail("You need to chattr -i files in efivarfs", how="println")


def _key_sync(ctx: _Ctx, opts: Opts, oems: list[str]) -> None:
    """enroll-keys.go KeySync."""
    keys = ctx.key_hierarchy()
    owner = ctx.guid()
    fw = ctx.firmware()
    # --append starts from what the firmware holds, otherwise from nothing.
    state = _empty_vars()
    if opts.get("append"):
        state = {v: list(fw.variables[v]) for v in VARIABLES}

    def append(var: str, entry: SignatureEntry) -> None:
        if entry not in state[var]:
            state[var].append(entry)

    for var in ("db", "KEK", "PK"):
        append(var, SignatureEntry(owner, "x509", keys[var].cert_der))
    log = ctx.log
    for oem in oems:
        if oem == "tpm-eventlog":
            log.print("\nWith checksums from the TPM Eventlog...")
            if not fw.tpm_eventlog:
                raise _Fail("could not enroll db keys: no eventlog found")
            if not fw.option_roms:
                raise _Fail("could not find any OpROM entries in the TPM eventlog")
            for digest in dict.fromkeys(fw.option_roms):
                state["db"].append(SignatureEntry(OEM_GUIDS["tpm-eventlog"], "sha256", bytes.fromhex(digest)))
        elif oem == "microsoft":
            log.print("\nWith vendor keys from microsoft...")
            state["db"] += _oem_entries("microsoft", "db")
            state["KEK"] += _oem_entries("microsoft", "KEK")
        elif oem == "custom":
            log.print("\nWith custom keys...")
            state["db"] += _custom_entries(ctx, "db")
            state["KEK"] += _custom_entries(ctx, "KEK")
        elif oem == "firmware-builtin":
            log.print("\nWith vendor certificates built into the firmware...")
            for var in opts.get("firmware-builtin", []):
                try:
                    entries = _builtin_entries(ctx, var)
                except _Fail as exc:
                    raise exc.wrap("could not enroll built-in firmware keys: ") from exc
                state[var] += entries

    export = opts.get("export", "")
    if export:
        _export(ctx, keys, state, export)
        return
    partial = opts.get("partial", "")
    for var in (partial,) if partial else ("db", "KEK", "PK"):
        _write_variable(ctx, var, state[var], keys)


def _export(ctx: _Ctx, keys: dict[str, _Key], state: dict[str, list[SignatureEntry]], kind: str) -> None:
    """--export esl|auth: write {db,KEK,PK}.<kind> to the current directory."""
    if kind == "auth":
        ctx.log.print("\nExporting as auth files...")
        blobs = {v: _signed_update(ctx, v, state[v], keys) for v in ("db", "KEK", "PK")}
    else:
        ctx.log.print("\nExporting as esl files...")
        blobs = {v: _esl_bytes(state[v]) for v in ("db", "KEK", "PK")}
    for var in ("db", "KEK", "PK"):
        name = f"{var}.{kind}"
        try:
            with open(name, "wb") as handle:  # fs.WriteFile(..., 0o644) in the cwd
                handle.write(blobs[var])
        except OSError as exc:
            raise _Fail(_os_error("open", name, exc), permission=_eperm(exc)) from exc


def _signed_update(ctx: _Ctx, var: str, entries: list[SignatureEntry], keys: dict[str, _Key]) -> bytes:
    """An EFI_VARIABLE_AUTHENTICATION_2 update made by efitools' sign-efi-sig-list."""
    signer = keys[_SIGNER[var]]
    with tempfile.TemporaryDirectory(prefix="sbctl-auth-") as tmp:
        esl = os.path.join(tmp, f"{var}.esl")
        auth = os.path.join(tmp, f"{var}.auth")
        Path(esl).write_bytes(_esl_bytes(entries))
        code, text = _run(
            ["sign-efi-sig-list", "-k", signer.key_path, "-c", signer.cert_path, var, esl, auth]
        )
        if code != 0:
            raise _Fail(f"sbctl emulator: sign-efi-sig-list failed: {text.strip()}")
        return Path(auth).read_bytes()


def _cmd_enroll_keys(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    fw = ctx.firmware()
    export = opts.get("export", "")
    partial = opts.get("partial", "")
    log = ctx.log
    if not fw.uefi and not export:
        raise _Fail(f"open {SETUP_MODE_EFIVAR}: no such file or directory")
    if not fw.setup_mode and not partial and not export:
        raise _Fail(SETUP_MODE_DISABLED_MSG)
    if opts.get("custom-bytes"):
        _enroll_custom_bytes(ctx, opts["custom-bytes"], partial)
        return
    oems: list[str] = []
    if opts.get("microsoft"):
        oems.append("microsoft")
    if opts.get("tpm-eventlog"):
        oems.append("tpm-eventlog")
    if opts.get("custom"):
        oems.append("custom")
    if opts.get("firmware-builtin"):
        oems.append("firmware-builtin")
    for extra in ctx.config.db_additions:
        if extra not in oems:
            oems.append(extra)
    if not opts.get("ignore-immutable") and not export:
        _check_immutable(ctx)
    if not (opts.get("force") or opts.get("tpm-eventlog") or opts.get("microsoft") or opts.get("append")):
        _check_eventlog_oprom(fw)
    log.print("Exporting keys to EFI files..." if export else "Enrolling keys to EFI variables...")
    try:
        _key_sync(ctx, opts, oems)
    except _Fail as exc:
        log.notok("")
        raise exc.wrap("couldn't sync keys: ") from exc
    log.ok("\nExported files!" if export else "\nEnrolled keys to the EFI variables!")


def _enroll_custom_bytes(ctx: _Ctx, path: str, partial: str) -> None:
    """--custom-bytes: write a file straight into an efivar (needs --partial)."""
    log = ctx.log
    if not partial:
        log.notok("")
        raise _Fail("missing hierarchy to enroll custom bytes to (use --partial)")
    log.print("Enrolling custom bytes to EFI variables...")
    fw = ctx.firmware()
    try:
        data = ctx.read_file(path)
        if not fw.setup_mode:
            # An unauthenticated write outside Setup Mode is refused by firmware.
            raise _Fail(f"write {EFIVAR_FILES[partial]}: permission denied", permission=True)
        try:
            entries = _parse_esl(_strip_auth_header(data))
        except ValueError as exc:
            raise _Fail(f"write {EFIVAR_FILES[partial]}: invalid argument") from exc
        fw.variables[partial] = entries
        if partial == "PK":
            fw.setup_mode = not entries
        ctx.save_firmware()
    except _Fail as exc:
        log.notok("")
        raise exc.wrap(f"couldn't roll out custom bytes from {path} for hierarchy {partial}: ") from exc
    log.ok("\nEnrolled custom bytes to the EFI variables!")


def _strip_auth_header(data: bytes) -> bytes:
    """Skip an EFI_VARIABLE_AUTHENTICATION_2 header (EFI_TIME + WIN_CERTIFICATE)."""
    if len(data) >= 24 and data[16 + 6 : 16 + 8] == (0x0EF1).to_bytes(2, "little"):
        cert_len = int.from_bytes(data[16:20], "little")
        return data[16 + cert_len :]
    return data


def _cmd_sign(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    if not args:
        ctx.log.print("Requires a file to sign\n")
        raise _Exit(1)
    file = os.path.abspath(args[0])
    output = opts.get("output", "")
    if not output:
        for entry in ctx.read_files_db().values():
            if entry["file"] == file:
                output = entry["output_file"]
                break
    output = os.path.abspath(output) if output else file
    keys = ctx.key_hierarchy()
    try:
        _sign_and_save(ctx, keys, file, output, bool(opts.get("save")))
    except _AlreadySigned:
        ctx.log.print(f"File has already been signed {output}\n")
        return
    ctx.log.ok(f"Signed {output}")


def _sign_and_save(ctx: _Ctx, keys: dict[str, _Key], file: str, output: str, save: bool) -> None:
    """sbctl.go Sign: sign, and with --save record the file in the database."""
    try:
        files = ctx.read_files_db()
    except _Fail as exc:
        raise _Fail(f"couldn't open database: {ctx.show(ctx.config.files_db)}") from exc
    already = False
    entry = files.get(file)
    if entry and entry["output_file"] == output:
        _sign_file(ctx, keys, entry["file"], entry["output_file"])
        ctx.write_files_db(files)
    else:
        try:
            _sign_file(ctx, keys, file, output)
        except _AlreadySigned:
            if not save:
                raise
            already = True
    if save:
        files[file] = {"file": file, "output_file": output}
        ctx.write_files_db(files)
    if already:
        raise _AlreadySigned


def _cmd_sign_all(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    if opts.get("generate"):
        raise _Fail("sbctl emulator: sign-all --generate (bundles) is not emulated")
    files = ctx.read_files_db()
    failed = False
    for key in sorted(files):
        entry = files[key]
        try:
            keys = ctx.key_hierarchy()
        except _Fail as exc:
            raise _Fail(exc.message, how="silent") from exc
        try:
            _sign_file(ctx, keys, entry["file"], entry["output_file"])
        except _AlreadySigned:
            ctx.log.print(f"File has already been signed {entry['output_file']}\n")
        except _Fail as exc:
            ctx.log.error(f"failed signing {entry['file']}: {exc.message}")
            failed = True
            continue
        else:
            ctx.log.ok(f"Signed {entry['output_file']}")
        ctx.write_files_db(files)
    if failed:
        raise _Fail("", how="silent")


def _esp_path(ctx: _Ctx) -> str:
    """sbctl.GetESP: environment first, then (instead of lsblk) the firmware file."""
    for name in ("SYSTEMD_ESP_PATH", "ESP_PATH"):
        if name in ctx.env:
            return ctx.env[name]
    esp = ctx.firmware().esp
    # lsblk only reports mounted partitions, so a missing directory means
    # sbctl found no ESP (a missing ESP_PATH, by contrast, reaches afero.Walk).
    if not esp or not os.path.isdir(ctx.sys(esp)):
        raise _Fail("failed to find EFI system partition")
    return ctx.sys(esp)


def _checked_key(path: str) -> str:
    """util.go AddChecked/InChecked: the path without its first component."""
    return "/".join(path.split("/")[2:])


def _go_panic() -> NoReturn:
    """afero.Walk hands verify a nil FileInfo for unreadable paths; sbctl dereferences it."""
    sys.stdout.flush()
    sys.stderr.write(
        "panic: runtime error: invalid memory address or nil pointer dereference\n"
        "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]\n"
    )
    sys.stderr.flush()
    raise _Exit(2)


def _cmd_verify(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    esp = _esp_path(ctx)
    # ESP paths from the firmware file are sbctl's own (shown without the
    # emulator root); database entries, arguments and ESP_PATH are the user's.
    esp_is_system = not any(name in ctx.env for name in ("SYSTEMD_ESP_PATH", "ESP_PATH"))
    results: list[dict[str, Any]] = []
    keys_cache: dict[str, _Key] = {}

    def verify_one(path: str, shown: str) -> None:
        log = ctx.log
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            log.warn(f"{shown} does not exist")
            results.append({"file_name": shown, "is_signed": -1})
            return
        except PermissionError:
            log.warn(f"{shown} permission denied. Can't read file\n")
            return
        except IsADirectoryError as exc:
            raise _Fail(_os_error("read", shown, exc)) from exc
        if not _check_msdos(data):
            raise _InvalidHeader(f"{shown}: invalid pe header")
        if not keys_cache:
            keys_cache.update(ctx.key_hierarchy())
        signed = _verify_file(ctx, keys_cache, path)
        if signed:
            log.ok(f"{shown} is signed")
        else:
            log.notok(f"{shown} is not signed")
        results.append({"file_name": shown, "is_signed": 1 if signed else 0})

    if args:
        for file in args:
            try:
                verify_one(file, file)
            except _InvalidHeader:
                ctx.log.error(f"{file} is not a valid EFI binary")
                return
        if ctx.opts.get("json"):
            ctx.log.json(results or None)  # Go marshals the nil slice as null
        return
    esp_shown = ctx.show(esp) if esp_is_system else esp
    ctx.log.print(f"Verifying file database and EFI images in {esp_shown}...\n")
    checked: set[str] = set()
    try:
        files = ctx.read_files_db()
    except _Fail as exc:
        raise _Fail(f"couldn't open database {ctx.show(ctx.config.files_db)}: {exc.message}") from exc
    for key in sorted(files):
        out = files[key]["output_file"]
        checked.add(_checked_key(out))
        try:
            verify_one(out, out)
        except _InvalidHeader as exc:
            raise _Fail(str(exc)) from exc
    for path in _walk(ctx, esp):
        if _checked_key(path) in checked:
            continue
        shown = ctx.show(path) if esp_is_system else path
        try:
            verify_one(path, shown)
        except _InvalidHeader:
            continue  # scanning the ESP: non-PE files are expected
        except _Fail as exc:
            ctx.log.error(f"failed to verify file {shown}: {exc.message}")
    if ctx.opts.get("json"):
        ctx.log.json(results or None)


class _InvalidHeader(Exception):
    """verify.go ErrInvalidHeader."""


def _walk(ctx: _Ctx, root: str) -> Iterator[str]:
    """afero.Walk order (lexical), yielding non-directories the way verify sees them."""
    root = posixpath.normpath(root)
    try:
        st = os.lstat(root)
    except OSError as exc:
        ctx.log.error(f"failed to read path {ctx.show(root)}: {_os_error('lstat', ctx.show(root), exc)}")
        _go_panic()
    yield from _walk_entry(ctx, root, st)


def _walk_entry(ctx: _Ctx, path: str, st: os.stat_result) -> Iterator[str]:
    import stat as statmod

    if statmod.S_ISDIR(st.st_mode):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            ctx.log.error(f"failed to read path {ctx.show(path)}: {_os_error('open', ctx.show(path), exc)}")
            return
        for name in names:
            child = posixpath.join(path, name)
            try:
                child_st = os.lstat(child)
            except OSError:
                _go_panic()
            yield from _walk_entry(ctx, child, child_st)
        return
    try:
        followed = os.stat(path)
    except OSError:
        _go_panic()  # a dangling symlink: Stat fails and sbctl uses the nil result
    if not statmod.S_ISDIR(followed.st_mode):
        yield path


def _cmd_list_files(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    try:
        files = ctx.read_files_db()
    except _Fail as exc:
        raise _Fail(f"couldn't open database {ctx.show(ctx.config.files_db)}: {exc.message}") from exc
    listed: list[dict[str, Any]] = []
    log = ctx.log
    for key in sorted(files):
        entry = files[key]
        keys = ctx.key_hierarchy()
        try:
            signed = _verify_file(ctx, keys, entry["output_file"])
        except _Fail as exc:
            log.error(f"{ctx.show(entry['output_file'])}: {exc.message}")
            log.error("")
            continue
        log.println(entry["file"])
        log.print("Signed:\t\t")
        (log.ok if signed else log.notok)("Signed" if signed else "Not Signed")
        if entry["file"] != entry["output_file"]:
            log.print(f"Output File:\t{entry['output_file']}\n")
        log.println("")
        listed.append({"file": entry["file"], "output_file": entry["output_file"], "is_signed": signed})
    if ctx.opts.get("json"):
        ctx.log.json(listed)


def _cmd_remove_file(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    if not args:
        ctx.log.println("Need to specify file")
        raise _Exit(1)
    files = ctx.read_files_db()
    if args[0] not in files:
        ctx.log.print(f"File {args[0]} doesn't exist in database!\n")
        raise _Exit(1)
    del files[args[0]]
    ctx.write_files_db(files)
    ctx.log.print(f"Removed {args[0]} from the database.\n")


_RESET_MESSAGES = {
    "PK": ("Removed Platform Key!", "the Platform Key"),
    "KEK": ("Removed Key Exchange Keys!", "a Key Exchange Key"),
    "db": ("Removed Signature Database!", "the Signature Database"),
}


def _cmd_reset(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    partial = opts.get("partial", "")
    cert_files = [p for p in opts.get("cert-files", "").split(";") if p] if partial else []
    var = partial or "PK"
    try:
        _reset_database(ctx, var, cert_files)
    except _Fail as exc:
        if not partial:
            raise exc.wrap("could not reset PK: ", keep=False) from exc
        raise
    done, what = _RESET_MESSAGES[var]
    ctx.log.ok(done)
    ctx.log.println(f"Use `sbctl enroll-keys` to enroll {what} again.")


def _reset_database(ctx: _Ctx, var: str, cert_paths: list[str]) -> None:
    """reset.go resetDatabase: an empty (or pruned) list, signed with our keys."""
    fw = ctx.firmware()
    entries: list[SignatureEntry] = []
    if cert_paths:
        entries = list(fw.variables[var])
        owner = ctx.guid()
        for path in cert_paths:
            try:
                buf = Path(path).read_bytes()
            except OSError as exc:
                raise _Fail(
                    f"can't read new certificate from path {path}: {_os_error('open', path, exc)}"
                ) from exc
            try:
                der = _pem_to_der(buf)
            except ValueError as exc:
                raise _Fail("no pem block") from exc
            target = SignatureEntry(owner, "x509", der)
            if target not in entries:
                same_size = any(e.kind == "x509" and len(e.data) == len(der) for e in entries)
                raise _Fail("signature data not found" if same_size else "signature list not found")
            entries.remove(target)
    keys = ctx.key_hierarchy()
    _write_variable(ctx, var, entries, keys)


def _cmd_list_enrolled_keys(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    if ctx.opts.get("json"):
        raise _Fail(
            "sbctl emulator: list-enrolled-keys --json (Go's x509.Certificate encoding) is not emulated"
        )
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    fw = ctx.firmware()
    for var, label in (("PK", "PK"), ("KEK", "KEK"), ("db", "DB")):
        sys.stdout.write(f"{label}:\n")
        for entry in fw.variables[var]:
            if entry.kind != "x509":
                continue
            try:
                cert = x509.load_der_x509_certificate(entry.data)
            except ValueError:
                continue
            cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            sys.stdout.write(f"  {cns[0].value if cns else ''}\n")
    sys.stdout.flush()


def _cmd_version(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    sys.stdout.write(VERSION + "\n")


# --------------------------------------------------------------------------
# cobra / pflag emulation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Flag:
    """A pflag flag: bool, string, a StringSet ("set") or a comma list ("list")."""

    name: str
    usage: str
    short: str = ""
    kind: str = "bool"
    allowed: tuple[str, ...] = ()
    noopt: str = ""
    dest: str = ""
    hidden: bool = False

    @property
    def key(self) -> str:
        return self.dest or self.name

    @property
    def noopt_value(self) -> str:
        return "true" if self.kind == "bool" else self.noopt

    def type_name(self) -> str:
        return {"bool": "", "string": "string", "list": ""}.get(self.kind, "[" + ",".join(self.allowed) + "]")

    def display(self) -> str:
        return f"-{self.short}, --{self.name}" if self.short else f"--{self.name}"


@dataclass(frozen=True)
class _Command:
    """A cobra command; ``run`` None means "exists upstream, not emulated"."""

    name: str
    short: str
    run: Callable[[_Ctx, Opts, list[str]], None] | None
    flags: tuple[_Flag, ...] = ()
    aliases: tuple[str, ...] = ()
    hidden: bool = False


_GLOBAL_FLAGS = (
    _Flag("json", "Output as json"),
    _Flag("quiet", "Mute info from logging"),
    _Flag("disable-landlock", "Disable landlock sandboxing"),
    _Flag("debug", "Enable verbose debug logging"),
    _Flag("config", "Path to configuration file", kind="string"),
)
_PARTIAL = ("PK", "KEK", "db")

# In upstream's init order (Go initialises cmd/sbctl/*.go alphabetically).
_COMMANDS = (
    _Command("bundle", "Bundle the needed files for an EFI stub image", None),
    _Command("completion", "", None),
    _Command(
        "create-keys",
        "Create a set of secure boot signing keys",
        _cmd_create_keys,
        (
            _Flag("yk-overwrite", "overwrite existing key if it exists in the Yubikey Signature slot"),
            _Flag("export", "export file path", "e", "string"),
            _Flag("database-path", "location to create GUID file", "d", "string"),
            _Flag("keytype", "key type for all keys", kind="string"),
            _Flag("pk-keytype", "PK key type (default: file)", kind="string"),
            _Flag("kek-keytype", "KEK key type (default: file)", kind="string"),
            _Flag("db-keytype", "db key type (default: file)", kind="string"),
        ),
    ),
    _Command("debug", "Produce debug information for sbctl", None, hidden=True),
    _Command(
        "enroll-keys",
        "Enroll the current keys to EFI",
        _cmd_enroll_keys,
        (
            _Flag("yes-this-might-brick-my-machine", "ignore any errors and enroll keys", dest="force"),
            _Flag("yolo", "yolo", dest="force", hidden=True),
            _Flag("ignore-immutable", "ignore checking for immutable efivarfs files", "i"),
            _Flag(
                "export",
                "export the EFI database values to current directory instead of enrolling",
                kind="set",
                allowed=("esl", "auth"),
            ),
            _Flag("partial", "enroll a partial set of keys", "p", "set", _PARTIAL),
            _Flag("custom-bytes", "path to the bytefile to be enrolled to efivar", kind="string"),
            _Flag("append", "append the key to the existing ones", "a"),
            _Flag("microsoft", "include microsoft keys into key enrollment", "m"),
            _Flag("tpm-eventlog", "include TPM eventlog checksums into the db database", "t"),
            _Flag("custom", "include custom db and KEK", "c"),
            _Flag(
                "firmware-builtin",
                "include keys indicated by the firmware as being part of the default database",
                "f",
                "list",
                noopt="db,KEK",
            ),
        ),
    ),
    _Command("export-enrolled-keys", "Export already enrolled keys from the system", None),
    _Command("generate-bundles", "Generate all EFI stub bundles", None),
    _Command("import-keys", "Import keys into sbctl", None),
    _Command("list-bundles", "List stored bundles", None, aliases=("ls-bundles",)),
    _Command(
        "list-enrolled-keys",
        "List enrolled keys on the system",
        _cmd_list_enrolled_keys,
        aliases=("ls-enrolled-keys",),
    ),
    _Command("list-files", "List enrolled files", _cmd_list_files, aliases=("ls-files", "ls")),
    _Command("remove-bundle", "Remove bundle from database", None, aliases=("rm-bundle",)),
    _Command("remove-file", "Remove file from database", _cmd_remove_file, aliases=("rm-file", "rm")),
    _Command(
        "reset",
        "Reset Secure Boot Keys",
        _cmd_reset,
        (
            _Flag("partial", "reset a partial set of keys", "p", "set", _PARTIAL),
            _Flag(
                "cert-files",
                "optional paths to certificate file to remove from the hierarchy "
                "(separate individual paths by ';')",
                "c",
                "string",
            ),
        ),
    ),
    _Command("rotate-keys", "Rotate secure boot keys with new keys.", None),
    _Command("setup", "Setup sbctl", None),
    _Command(
        "sign-all",
        "Sign all enrolled files with secure boot keys",
        _cmd_sign_all,
        (_Flag("generate", "run all generate-* sub-commands before signing", "g"),),
    ),
    _Command(
        "sign",
        "Sign a file with secure boot keys",
        _cmd_sign,
        (
            _Flag("save", "save file to the database", "s"),
            _Flag("output", "output filename. Default replaces the file", "o", "string"),
        ),
    ),
    _Command("status", "Show current boot status", _cmd_status),
    _Command("verify", "Find and check if files in the ESP are signed or not", _cmd_verify),
    _Command("version", "Print sbctl version", _cmd_version, hidden=True),
    _Command("help", "Help about any command", None),
)
_ROOT = _Command("sbctl", "Secure Boot Key Manager", None)
_BY_NAME = {n: c for c in _COMMANDS for n in (c.name, *c.aliases)}


def _available(cmd: _Command) -> bool:
    """cobra IsAvailableCommand (help is listed separately)."""
    return not cmd.hidden and cmd.name not in ("help", "completion")


def _help_flag(cmd: _Command) -> _Flag:
    return _Flag("help", f"help for {cmd.name}", "h")


def _all_flags(cmd: _Command) -> list[_Flag]:
    return [*cmd.flags, *_GLOBAL_FLAGS, _help_flag(cmd)]


def _parse_bool(text: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"strconv.ParseBool: parsing {_go_quote(text)}: invalid syntax")


def _set_flag(flag: _Flag, value: str, values: Opts) -> None:
    try:
        if flag.kind == "bool":
            values[flag.key] = _parse_bool(value)
        elif flag.kind == "string":
            values[flag.key] = value
        elif flag.kind == "set":
            if value not in flag.allowed:
                raise ValueError(f"{value} is not included in {','.join(flag.allowed)}")
            values[flag.key] = value
        else:
            values.setdefault(flag.key, []).extend(value.split(","))
    except ValueError as exc:
        raise _FlagError(
            f"invalid argument {_go_quote(value)} for {_go_quote(flag.display())} flag: {exc}"
        ) from exc


def _parse_flags(flags: list[_Flag], args: list[str]) -> tuple[Opts, list[str]]:
    """pflag FlagSet.Parse with interspersed arguments."""
    by_name = {f.name: f for f in flags}
    by_short = {f.short: f for f in flags if f.short}
    values: Opts = {}
    positional: list[str] = []
    rest = list(args)
    while rest:
        s = rest.pop(0)
        if len(s) < 2 or s[0] != "-":
            positional.append(s)
            continue
        if s[1] == "-":
            if len(s) == 2:
                positional.extend(rest)
                break
            body = s[2:]
            if body[0] in "-=":
                raise _FlagError(f"bad flag syntax: {s}")
            name, eq, value = body.partition("=")
            flag = by_name.get(name)
            if flag is None:
                raise _FlagError(f"unknown flag: --{name}")
            if not eq:
                if flag.noopt_value:
                    value = flag.noopt_value
                elif rest:
                    value = rest.pop(0)
                else:
                    raise _FlagError(f"flag needs an argument: {s}")
            _set_flag(flag, value, values)
            continue
        shorts = s[1:]
        while shorts:
            c = shorts[0]
            flag = by_short.get(c)
            if flag is None:
                raise _FlagError(f"unknown shorthand flag: '{c}' in -{shorts}")
            if len(shorts) > 2 and shorts[1] == "=":
                value, shorts = shorts[2:], ""
            elif flag.noopt_value:
                value, shorts = flag.noopt_value, shorts[1:]
            elif len(shorts) > 1:
                value, shorts = shorts[1:], ""
            elif rest:
                value, shorts = rest.pop(0), ""
            else:
                raise _FlagError(f"flag needs an argument: '{c}' in -{shorts}")
            _set_flag(flag, value, values)
    return values, positional


def _strip_flags(args: list[str], flags: Sequence[_Flag]) -> list[str]:
    """cobra stripFlags: the non-flag words, guessing which flags take values."""
    long_noopt = {f.name for f in flags if f.noopt_value}
    short_noopt = {f.short for f in flags if f.short and f.noopt_value}
    commands: list[str] = []
    rest = list(args)
    while rest:
        s = rest.pop(0)
        if s == "--":
            break
        takes_value = (s.startswith("--") and "=" not in s and s[2:] not in long_noopt) or (
            s.startswith("-") and "=" not in s and len(s) == 2 and s[1:] not in short_noopt
        )
        if takes_value:
            if len(rest) <= 1:
                break
            rest.pop(0)
            continue
        if s and not s.startswith("-"):
            commands.append(s)
    return commands


def _args_minus_first(args: list[str], word: str, flags: Sequence[_Flag]) -> list[str]:
    """cobra argsMinusFirstX."""
    long_noopt = {f.name for f in flags if f.noopt_value}
    short_noopt = {f.short for f in flags if f.short and f.noopt_value}
    pos = 0
    while pos < len(args):
        s = args[pos]
        if s == "--":
            break
        if (s.startswith("--") and "=" not in s and s[2:] not in long_noopt) or (
            s.startswith("-") and "=" not in s and len(s) == 2 and s[1:] not in short_noopt
        ):
            pos += 2
            continue
        if not s.startswith("-") and s == word:
            return args[:pos] + args[pos + 1 :]
        pos += 1
    return args


def _levenshtein(a: str, b: str) -> int:
    a, b = a.lower(), b.lower()
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _suggestions(word: str) -> str:
    found = [
        c.name
        for c in _COMMANDS
        if _available(c) and (_levenshtein(word, c.name) <= 2 or c.name.lower().startswith(word.lower()))
    ]
    if not found:
        return ""
    return "\n\nDid you mean this?\n" + "".join(f"\t{name}\n" for name in found)


def _flag_usages(flags: list[_Flag]) -> str:
    """pflag FlagUsages: aligned columns, sorted by name, hidden flags left out."""
    lines = []
    for flag in sorted((f for f in flags if not f.hidden), key=lambda f: f.name):
        line = f"  -{flag.short}, --{flag.name}" if flag.short else f"      --{flag.name}"
        if flag.type_name():
            line += " " + flag.type_name()
        if flag.noopt and flag.kind != "bool":
            line += f"[={flag.noopt}]"
        lines.append((line, flag.usage))
    width = max(len(line) + 1 for line, _ in lines)
    return "".join(f"{line} {' ' * (width - len(line))} {usage}\n" for line, usage in lines).rstrip()


def _usage(cmd: _Command) -> str:
    """cobra's default usage template, rendered for sbctl's commands."""
    if cmd is _ROOT:
        pad = max(11, max(len(c.name) for c in _COMMANDS))
        listed = sorted((c for c in _COMMANDS if _available(c) or c.name == "help"), key=lambda c: c.name)
        return (
            "Usage:\n  sbctl [command]\n\nAvailable Commands:\n"
            + "".join(f"  {c.name.ljust(pad)} {c.short}\n" for c in listed)
            + "\nFlags:\n"
            + _flag_usages([*_GLOBAL_FLAGS, _help_flag(cmd)])
            + '\n\nUse "sbctl [command] --help" for more information about a command.\n'
        )
    text = f"Usage:\n  sbctl {cmd.name} [flags]"
    if cmd.aliases:
        text += "\n\nAliases:\n  " + ", ".join((cmd.name, *cmd.aliases))
    text += "\n\nFlags:\n" + _flag_usages([*cmd.flags, _help_flag(cmd)])
    text += "\n\nGlobal Flags:\n" + _flag_usages(list(_GLOBAL_FLAGS)) + "\n"
    return text


def _help(cmd: _Command) -> str:
    head = f"{cmd.short.rstrip()}\n\n" if cmd.short else ""
    return head + _usage(cmd)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def _find(argv: list[str]) -> tuple[_Command, list[str]]:
    """cobra Command.Find for a root with one level of subcommands."""
    root_flags = list(_GLOBAL_FLAGS)  # the help flag is not known yet at this point
    words = _strip_flags(argv, root_flags)
    if words and words[0] in _BY_NAME:
        return _BY_NAME[words[0]], _args_minus_first(argv, words[0], root_flags)
    if words:
        raise _Fail(
            f'unknown command {_go_quote(words[0])} for "sbctl"{_suggestions(words[0])}',
            how="println",
        )
    return _ROOT, argv


def _execute(ctx: _Ctx, argv: list[str]) -> None:
    cmd, args = _find(argv)
    if cmd.run is None and cmd not in (_ROOT, _BY_NAME["help"]):
        raise _Fail(f"sbctl emulator: the {cmd.name!r} command is not emulated")
    try:
        opts, positional = _parse_flags(_all_flags(cmd), args)
    except _FlagError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{exc}\n{_usage(cmd)}\n")
        sys.stderr.flush()
        raise _Fail("", how="silent") from exc
    if opts.get("help") or cmd is _ROOT:
        sys.stdout.write(_help(cmd))
        sys.stdout.flush()
        return
    if cmd.name == "help":
        target = _BY_NAME.get(positional[0]) if positional else _ROOT
        if target is None:
            sys.stderr.write(f"Unknown help topic [`{positional[0]}`]\n{_usage(_ROOT)}")
        else:
            sys.stdout.write(_help(target))
        return
    ctx.load_config(opts.get("config", ""))
    ctx.opts = opts
    if opts.get("json"):
        ctx.log.on = False
    if opts.get("quiet"):
        ctx.log.disable_info = True
    assert cmd.run is not None
    cmd.run(ctx, opts, positional)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sbctl command line; return the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        # Go writes UTF-8 whatever the locale; so do we (✓/✗ must not crash).
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure:
            reconfigure(encoding="utf-8")
    env = dict(os.environ)
    log = _Log(sys.stdout, sys.stderr, env)
    ctx = _Ctx(env, log)
    try:
        _execute(ctx, args)
    except _Exit as exc:
        return exc.code
    except _Fail as exc:
        if exc.how == "println":
            log.println(exc.message)
        elif exc.how == "error":
            text = exc.message
            if exc.permission:
                text = "sbctl requires root to run: " + text
            log.error(text)
        return 1
    except PermissionError as exc:
        log.error("sbctl requires root to run: " + _os_error("open", ctx.show(str(exc.filename or "")), exc))
        return 1
    finally:
        sys.stdout.flush()
    return 0


def install(dest_dir: Path, python: str = sys.executable) -> Path:
    """Write ``dest_dir/sbctl``: a shell wrapper running this emulator.

    PYTHONPATH points at the checkout containing ``infratool`` so the wrapper
    works without installing the package; ``-P`` keeps the caller's working
    directory off ``sys.path`` so a stray ``infratool`` there cannot shadow it.
    """
    import shlex

    package_parent = Path(__file__).resolve().parents[2]
    script = (
        "#!/bin/sh\n"
        "# sbctl emulator (infratool lab): see infratool/lab/sbctl.py\n"
        f"PYTHONPATH={shlex.quote(str(package_parent))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {shlex.quote(python)} -P -m infratool.lab.sbctl "$@"\n'
    )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "sbctl"
    _atomic_write(str(target), script.encode(), 0o755)
    return target


if __name__ == "__main__":
    sys.exit(main())
