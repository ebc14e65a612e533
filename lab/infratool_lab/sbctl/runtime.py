"""The runtime context of one command (environment, paths, config, firmware) and key creation
(backend/file.go)."""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .consts import (
    CONFIG_FILE,
    DEFAULT_DIR,
    DEFAULT_DIR_SINCE,
    LEGACY_DATABASE_PATH,
    OLD_CONFIG_MSG,
    VERSION,
    parse_version,
)
from .encoding import _atomic_write, _pem_blocks, _pem_to_der
from .firmware import FirmwareState, firmware_state_path, read_firmware_state, write_firmware_state
from .output import _Fail, _go_json, _Log, _os_error


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
        # What a build bakes in with -ldflags "-X ..." (sbctl.Version,
        # sbctl.DatabasePath); the wrapper of a lab host sets them.
        self.version_text = env.get("SBCTL_EMULATOR_VERSION") or VERSION
        self.version = parse_version(self.version_text)
        self.database_path = env.get("SBCTL_EMULATOR_DATABASE_PATH") or LEGACY_DATABASE_PATH
        self.config = self._mkconfig(DEFAULT_DIR)
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

    def old_config(self) -> _Config:
        """config.OldConfig(sbctl.DatabasePath): the legacy layout, files.db."""
        config = self._mkconfig(self.database_path)
        config.files_db = config.files_db.replace(".json", ".db", 1)
        return config

    def load_config(self, config_flag: str) -> None:
        """main.go's PersistentPreRunE: --config, legacy layout, sbctl.conf, default.

        Before 0.15 there was no configuration: everything lived in
        DatabasePath, and no notice was printed.
        """
        if self.version < DEFAULT_DIR_SINCE:
            self.config = self.old_config()
        elif config_flag:
            try:
                text = Path(config_flag).read_bytes()
            except OSError as exc:
                raise _Fail(_os_error("open", config_flag, exc)) from exc
            self._apply_yaml(text)
        elif os.path.exists(self.sys(self.database_path)) and not os.path.exists(self.sys(CONFIG_FILE)):
            # Printed before --json turns logging off: it reaches stderr on every run.
            self.log.error(OLD_CONFIG_MSG)
            self.config = self.old_config()
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


Opts = dict[str, Any]
"""Parsed flag values by flag key (pflag FlagSet values)."""
