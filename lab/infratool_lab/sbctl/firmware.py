"""The emulated UEFI firmware: signature entries, the state kept in the firmware file, reboots."""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .consts import (
    _DATA_DIR,
    CERT_SHA256_GUID,
    CERT_X509_GUID,
    DEFAULT_FIRMWARE_FILE,
    KNOWN_QUIRKS,
    LAB_OEM_GUID,
    MICROSOFT_2011,
    OEM_GUIDS,
    VARIABLES,
    _canon_guid,
)
from .encoding import _atomic_write, _der_to_pem, _guid_bytes, _pem_to_der, _sha256


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
    if value is None:
        return _vendor_vars()
    value = value or {}
    unknown = set(value) - set(VARIABLES)
    if unknown:
        raise ValueError(f"unknown variables {sorted(unknown)}")
    return {v: [SignatureEntry.from_json(e) for e in value.get(v, [])] for v in VARIABLES}


def _empty_vars() -> dict[str, list[SignatureEntry]]:
    return {v: [] for v in VARIABLES}


def _data_entries(owner: str, directory: Path, names: tuple[str, ...] | None = None) -> list[SignatureEntry]:
    if not directory.is_dir():
        return []
    return [
        SignatureEntry(owner, "x509", p.read_bytes())
        for p in sorted(directory.iterdir(), key=lambda p: p.name)
        if p.is_file() and (names is None or p.stem in names)
    ]


def _vendor_vars(with_pk: bool = False) -> dict[str, list[SignatureEntry]]:
    """What a PC ships with: the OEM's PK/KEK/db and Microsoft's 2011 KEK and db CAs.

    Like the factory keys of common hardware (the Microsoft certificates the
    OEM enrolls carry Microsoft's owner GUID). The PK is only there with
    ``with_pk``: the default machine had its PK cleared to enter Setup Mode,
    which leaves KEK and db in place.
    """
    ms, oem = _DATA_DIR / "microsoft", _DATA_DIR / "oem"
    return {
        "PK": _data_entries(LAB_OEM_GUID, oem / "PK") if with_pk else [],
        "KEK": _data_entries(OEM_GUIDS["microsoft"], ms / "KEK", MICROSOFT_2011)
        + _data_entries(LAB_OEM_GUID, oem / "KEK"),
        "db": _data_entries(OEM_GUIDS["microsoft"], ms / "db", MICROSOFT_2011)
        + _data_entries(LAB_OEM_GUID, oem / "db"),
    }


def _vendor_defaults() -> dict[str, list[SignatureEntry]]:
    return _vendor_vars(with_pk=True)


@dataclass
class FirmwareState:
    """The emulated UEFI firmware, kept as JSON in the firmware file.

    ``uefi`` false emulates a BIOS boot (no efivarfs).  ``setup_mode`` and
    ``secure_boot`` are the SetupMode/SecureBoot variables;
    ``secure_boot_enabled`` is the firmware-setup switch that
    :meth:`reboot` applies.  ``variables`` holds the enrolled PK/KEK/db,
    ``defaults`` the firmware's built-in PKDefault/KEKDefault/dbDefault
    (for ``--firmware-builtin``).  Left out of the JSON, both are the
    factory keys of :func:`_vendor_vars` (the OEM's and Microsoft's 2011
    certificates; no PK, since clearing it is how Setup Mode is entered);
    ``{}`` is a machine with nothing enrolled.  ``tpm_eventlog`` says whether
    /sys/kernel/security/tpm0/binary_bios_measurements exists and
    ``option_roms`` lists the SHA-256 digests of option-ROM drivers it
    records (``true`` in JSON means one).  ``immutable_efivars`` is the
    kernel's rule (fs/efivarfs: every PK/KEK/db file that exists is created
    ``S_IMMUTABLE``); ``false`` models flags someone already cleared.
    ``cleared_immutable`` lists the variables whose flag was cleared since
    boot (``chattr -i``, or sbctl writing with ``-i``: go-uefi unsets the
    flag of the file it writes); a reboot makes them immutable again.
    ``firmware_quirks`` holds quirk IDs (e.g. "FQ0001") or full quirk
    objects.  ``esp`` is the ESP mount point.
    """

    uefi: bool = True
    setup_mode: bool = True
    secure_boot: bool = False
    secure_boot_enabled: bool = True
    variables: dict[str, list[SignatureEntry]] = field(default_factory=_vendor_vars)
    defaults: dict[str, list[SignatureEntry]] = field(default_factory=_vendor_defaults)
    tpm_eventlog: bool = True
    option_roms: list[str] = field(default_factory=list)
    immutable_efivars: bool = True
    cleared_immutable: list[str] = field(default_factory=list)
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
            "cleared_immutable": list(self.cleared_immutable),
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
            defaults=_entries_from_json(obj.get("defaults")) if "defaults" in obj else _vendor_defaults(),
            tpm_eventlog=bool(obj.get("tpm_eventlog", True)),
            option_roms=[str(r) for r in roms],
            immutable_efivars=bool(obj.get("immutable_efivars", True)),
            cleared_immutable=[v for v in VARIABLES if v in (obj.get("cleared_immutable") or [])],
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

    def immutable(self, var: str) -> bool:
        """Whether the efivarfs file of ``var`` carries the immutable flag now.

        The file exists only while the variable does (efivarfs lists what the
        firmware holds), and the kernel creates it immutable.
        """
        return self.immutable_efivars and bool(self.variables[var]) and var not in self.cleared_immutable

    def reboot(self) -> None:
        """What the next boot reports: Secure Boot is on in User Mode if enabled.

        efivarfs is mounted afresh, so every existing variable is immutable again.
        """
        self.secure_boot = self.secure_boot_enabled and not self.setup_mode
        self.cleared_immutable = []


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


# EFI_SIGNATURE_LISTs (UEFI spec 32.4.1) ------------------------------------


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
