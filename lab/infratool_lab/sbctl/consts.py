"""Constants, messages and quirks copied from upstream sbctl and go-uefi."""

from __future__ import annotations

import uuid
from pathlib import Path

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
"""sbctl.DatabasePath as upstream builds it (sbctl.go)."""
NIXPKGS_DATABASE_PATH = "/etc/secureboot"
"""sbctl.DatabasePath as nixpkgs builds it (``-X github.com/foxboron/sbctl.DatabasePath=/etc/secureboot``)."""
DEFAULT_DIR = "/var/lib/sbctl"
"""config.DefaultConfig's directory (since 0.15; before, DatabasePath was the only one)."""
CONFIG_FILE = "/etc/sbctl/sbctl.conf"
VERSION = "0.18"
OLD_CONFIG_MSG = "old configuration detected. Please use `sbctl setup --migrate`"
IMMUTABLE_MSG = "You need to chattr -i files in efivarfs"

# (major, minor) where behaviour changed, checked against the tags of Foxboron/sbctl.
DEFAULT_DIR_SINCE = (0, 15)
"""0.15 added /var/lib/sbctl (config.DefaultConfig), sbctl.conf, `setup` and `version`."""
MICROSOFT_2023_SINCE = (0, 17)
"""0.17 added Microsoft's 2023 certificates to certs/microsoft (0.13-0.16: the three 2011 ones)."""
# The vendor-key names certs/microsoft held before 0.17 (the 2011 certificates).
MICROSOFT_2011 = ("MicCorKEKCA2011_2011-06-24", "MicCorUEFCA2011_2011-06-27", "MicWinProPCA2011_2011-10-19")


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.18"`` → (0, 18); an unparsable version (``unknown``, a git describe) is the newest."""
    parts = []
    for piece in text.strip().lstrip("v").split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts) if parts else (999,)


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

# The lab's stand-in for an OEM: the owner GUID of its PK/KEK/db entries (sbctl_data/oem/).
LAB_OEM_GUID = "5d5a1a3e-0b1c-4c7e-9d55-1ab0e0e0e0e0"

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

# Inside the package, so copying the package to a lab host copies the certificates too.
_DATA_DIR = Path(__file__).with_name("sbctl_data")
