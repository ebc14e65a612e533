"""The encrypted key backup: one sops file per host in the fleet repo.

``secrets/secureboot/<host>.yaml`` holds, encrypted to the recipients of the
repo's ``.sops.yaml`` (the operators, the hosts, and the backup/mnemonic
recipient once ``secrets recover init`` added it)::

    secureboot:
      manifest: '{"bundle": "/var/lib/sbctl", "files": {"keys/db/db.key": {...}}, ...}'
      files:
        GUID: <base64>
        keys: {PK: {PK.key: <base64>, PK.pem: <base64>}, KEK: {...}, db: {...}}
      enrolled: '{"at": "...", "microsoft": true, "pk_sha256": "..."}'   # after enrollment

Every value is encrypted by sops (the manifest too: it costs nothing and
keeps file lists out of the repo's plain text). Contents are base64 because
key files are bytes; the manifest records mode, owner and SHA-256 per file so
a restore can be proved bit-for-bit, and so can the backup itself.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infratool.errors import SecretsFileError
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore
from infratool.tasks.secureboot.hostinfo import BUNDLE_FILES, KEY_FILES, KNOWN_BUNDLES
from infratool.tasks.secureboot.keyfiles import FileData, wrap

ROOT = "secureboot"
MANIFEST = f"{ROOT}/manifest"
ENROLLED = f"{ROOT}/enrolled"
FILES = f"{ROOT}/files/"


def backup_file(host: str) -> str:
    """The host's backup file, relative to the secrets directory (the sops store's root)."""
    return f"secureboot/{host}.yaml"


def shown_file(host: str) -> str:
    """The backup file as the operator finds it in the flake repo."""
    return f"secrets/{backup_file(host)}"


@dataclass(frozen=True)
class Backup:
    """A decrypted backup: where the keys lived, each file's metadata and content."""

    host: str
    bundle: str
    files: dict[str, FileData]
    manifest: dict[str, dict[str, Any]]
    """Per file: ``mode`` (octal text), ``owner``, ``group``, ``sha256`` as recorded."""
    enrolled: dict[str, Any] | None = None

    def hashes(self) -> dict[str, str]:
        """``{path: sha256}`` as the manifest records them."""
        return {p: m["sha256"] for p, m in self.manifest.items()}

    def same_keys(self, host: Mapping[str, str]) -> bool:
        """Whether the six key files in the backup are the host's (other files aside)."""
        mine = self.hashes()
        return all(mine.get(k) == host.get(k) for k in KEY_FILES)

    def integrity_problems(self) -> list[str]:
        """Files whose stored content does not hash to the manifest (or that one side lacks)."""
        problems = [f"{p}: missing from the backup" for p in self.manifest if p not in self.files]
        problems += [f"{p}: not in the manifest" for p in self.files if p not in self.manifest]
        problems += [
            f"{p}: content does not match its recorded SHA-256"
            for p, f in self.files.items()
            if p in self.manifest and f.sha256 != self.manifest[p]["sha256"]
        ]
        missing_keys = [k for k in KEY_FILES if k not in self.manifest]
        if missing_keys:
            problems.append(f"incomplete key set (no {', '.join(missing_keys)})")
        return problems

    def problems_against(self, host: Mapping[str, str]) -> list[str]:
        """Why this backup is not a copy of exactly the files ``{path: sha256}`` on the host (empty: it is)."""
        problems = self.integrity_problems()
        for path, digest in self.hashes().items():
            if path not in host:
                problems.append(f"{path}: in the backup, not on the host")
            elif host[path] != digest:
                problems.append(f"{path}: differs from the host's")
        problems += [f"{p}: on the host, not in the backup" for p in host if p not in self.manifest]
        return problems


def load(store: SopsStore, host: str) -> Backup | None:
    """The host's backup, decrypted (None when there is none).

    An undecryptable or tampered file raises :class:`SecretsFileError` (from
    the store); a decryptable file that is not a backup raises it too.
    """
    values = store.read(backup_file(host), missing_ok=True)
    if not values:
        return None
    shown = shown_file(host)
    manifest_secret = values.get(MANIFEST)
    if manifest_secret is None:
        raise SecretsFileError(f"not a Secure Boot key backup (no {MANIFEST})", file=shown)
    try:
        manifest = json.loads(manifest_secret.reveal_bytes())
        files_meta: dict[str, dict[str, Any]] = manifest["files"]
        bundle = str(manifest["bundle"])
    except (ValueError, KeyError, TypeError):
        raise SecretsFileError(f"{MANIFEST} is not a backup manifest", file=shown) from None
    if not isinstance(files_meta, dict):
        raise SecretsFileError(f"{MANIFEST} is not a backup manifest", file=shown) from None
    check_layout(shown, bundle, [key for key in values if key.startswith(FILES)], list(files_meta))
    files: dict[str, FileData] = {}
    for key, value in values.items():
        if not key.startswith(FILES):
            continue
        path = key[len(FILES) :]
        try:
            data = base64.b64decode(value.reveal_bytes(), validate=True)
        except (binascii.Error, ValueError):
            raise SecretsFileError(f"{key} is not base64", file=shown) from None
        meta = files_meta.get(path, {})
        files[path] = FileData(
            path,
            int(str(meta.get("mode", "0400")), 8),
            str(meta.get("owner", "root")),
            str(meta.get("group", "root")),
            wrap(path, data),
        )
    enrolled = None
    if values.get(ENROLLED) is not None:
        try:
            enrolled = json.loads(values[ENROLLED].reveal_bytes())
        except ValueError:
            enrolled = None
    return Backup(host, bundle, files, files_meta, enrolled)


class LayoutError(SecretsFileError):
    """A backup that names a file or directory outside sbctl's key layout (bad input: exit 3)."""


def check_layout(shown: str, bundle: str, keys: list[str], manifest_paths: list[str]) -> None:
    """Refuse a backup that names anything but sbctl's key layout under a known directory.

    A restore writes ``<bundle>/<path>`` for each entry as root, so both come
    from a short list, never from the file: anyone holding the public
    recipients can write a backup (issue 22.2).
    """
    if bundle not in KNOWN_BUNDLES:
        raise LayoutError(
            f"{MANIFEST}: bundle {bundle!r} is not an sbctl key directory ({', '.join(KNOWN_BUNDLES)}); "
            "refusing to restore anywhere else",
            file=shown,
        )
    allowed = "GUID and keys/{PK,KEK,db}/{PK,KEK,db}.{key,pem}"
    for key in keys:
        if key[len(FILES) :] not in BUNDLE_FILES:
            raise LayoutError(f"{key}: not a file of an sbctl key bundle (only {allowed})", file=shown)
    for path in manifest_paths:
        if path not in BUNDLE_FILES:
            raise LayoutError(
                f"{MANIFEST}: file {path!r} is not part of an sbctl key bundle (only {allowed})", file=shown
            )


def values_for(
    host: str, bundle: str, files: Mapping[str, FileData], old: Backup | None
) -> dict[str, Secret | str | None]:
    """The sops keys to write for a new backup of ``files`` (stale files of ``old`` deleted)."""
    manifest = {
        "version": 1,
        "host": host,
        "bundle": bundle,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": {
            p: {"mode": f"{f.mode:04o}", "owner": f.owner, "group": f.group, "sha256": f.sha256}
            for p, f in sorted(files.items())
        },
    }
    values: dict[str, Secret | str | None] = {MANIFEST: json.dumps(manifest, sort_keys=True)}
    for path, f in files.items():
        values[FILES + path] = Secret(base64.b64encode(f.raw).decode())
    if old is not None:
        for path in old.files:
            if path not in files:
                values[FILES + path] = None
        # A new key set was never enrolled: drop the old enrollment record.
        if old.enrolled is not None and old.hashes() != {p: f.sha256 for p, f in files.items()}:
            values[ENROLLED] = None
    return values


def enrollment_record(pk_sha256: str, microsoft: bool) -> str:
    """The ``secureboot/enrolled`` value written after a successful enrollment."""
    return json.dumps(
        {
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "microsoft": microsoft,
            "pk_sha256": pk_sha256,
        },
        sort_keys=True,
    )


def pk_digest(bundle_hashes: Mapping[str, str]) -> str:
    """What identifies an enrolled key set in the record: the SHA-256 of PK.pem's file."""
    return bundle_hashes.get("keys/PK/PK.pem", "")


def short(digest: str) -> str:
    """A SHA-256 shortened for plans (12 hex digits, like git's abbreviations)."""
    return digest[:12]


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
