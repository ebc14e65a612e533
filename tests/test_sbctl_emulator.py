"""The sbctl emulator, driven as a real subprocess like the real sbctl.

Every assertion is about sbctl's documented behaviour (exit codes, messages,
JSON shapes, the key layout, real Authenticode signatures checked with
``sbverify``), not about the emulator's internals, so these tests would pass
against the real sbctl too -- except for preparing the firmware, which the
emulator reads from a JSON file (``SBCTL_EMULATOR_ROOT`` prefixes its paths).
Set ``SBCTL_UNDER_TEST`` to another command (e.g. ``sbctl``) to try that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EFI_BINARY = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
KEYDIR = "var/lib/sbctl/keys"
FIRMWARE = "var/lib/sbctl-emulator/firmware.json"
SBCTL = shlex.split(os.environ.get("SBCTL_UNDER_TEST", "")) or [
    sys.executable,
    "-m",
    "infratool_lab.sbctl",
]

pytestmark = pytest.mark.skipif(
    not (shutil.which("sbsign") and shutil.which("sbverify") and EFI_BINARY.exists()),
    reason="needs sbsigntool and systemd-boot-efi",
)


@dataclass
class Host:
    """One emulated machine: a root directory plus helpers to run sbctl in it."""

    root: Path
    work: Path  # the user's files, outside the emulated system paths

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NO_COLOR", None)
        env.update(
            SBCTL_EMULATOR_ROOT=str(self.root),
            PYTHONPATH=str(REPO),
            ESP_PATH=str(self.work / "esp"),
        )
        env.update(extra)
        return env

    def sbctl(
        self, *args: str, cwd: Path | None = None, build: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run sbctl; ``build`` sets what a build bakes in (SBCTL_EMULATOR_VERSION/_DATABASE_PATH)."""
        return subprocess.run(
            [*SBCTL, *args],
            env=self.env(**(build or {})),
            cwd=cwd or self.work,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def json(self, *args: str) -> Any:
        proc = self.sbctl(*args, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def set_firmware(self, **fields: Any) -> Path:
        """Prepare the emulated firmware (the one step the real sbctl cannot take).

        Nothing enrolled unless ``variables`` is given: the emulator's default
        machine holds vendor keys (see the tests of the default machine).
        """
        fields.setdefault("variables", {})
        path = self.root / FIRMWARE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fields))
        return path

    def key(self, name: str, ext: str) -> Path:
        return self.root / KEYDIR / name / f"{name}.{ext}"


def _new_host(base: Path) -> Host:
    host = Host(root=base / "root", work=base / "work")
    host.root.mkdir()
    (host.work / "esp").mkdir(parents=True)
    return host


@dataclass
class Created:
    """What a fresh machine reported before and after ``sbctl create-keys``."""

    host: Host
    before: Any
    create: subprocess.CompletedProcess[str]
    after: Any


@pytest.fixture(scope="session")
def created(tmp_path_factory: pytest.TempPathFactory) -> Created:
    """One real create-keys per worker (RSA-4096 takes seconds); tests copy it."""
    host = _new_host(tmp_path_factory.mktemp("created"))
    before = host.json("status")
    create = host.sbctl("create-keys")
    after = host.json("status")
    return Created(host, before, create, after)


@pytest.fixture
def host(tmp_path: Path, created: Created) -> Iterator[Host]:
    """A machine in Setup Mode whose sbctl keys already exist."""
    fresh = _new_host(tmp_path)
    shutil.copytree(created.host.root / "var/lib/sbctl", fresh.root / "var/lib/sbctl")
    fresh.set_firmware(setup_mode=True, secure_boot=False)
    yield fresh


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- status / create-keys


def test_status_json_before_and_after_create_keys(created: Created) -> None:
    fields = {
        "installed": bool,
        "guid": str,
        "setup_mode": bool,
        "secure_boot": bool,
        "vendors": list,
        "firmware_quirks": list,
    }
    for status in (created.before, created.after):
        assert set(status) == set(fields)
        for name, kind in fields.items():
            assert isinstance(status[name], kind), name
    assert created.before["installed"] is False
    assert created.before["guid"] == ""

    assert created.create.returncode == 0, created.create.stderr
    assert "Secure boot keys created!" in created.create.stdout
    assert created.after["installed"] is True
    guid_file = (created.host.root / "var/lib/sbctl/GUID").read_text()
    assert created.after["guid"] == str(uuid.UUID(guid_file))
    assert f"Created Owner UUID {guid_file}" in created.create.stdout


def test_create_keys_writes_rsa4096_self_signed_hierarchy(created: Created) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    names = {"PK": "Platform Key", "KEK": "Key Exchange Key", "db": "Database Key"}
    for var, common_name in names.items():
        key_path, cert_path = created.host.key(var, "key"), created.host.key(var, "pem")
        assert key_path.stat().st_mode & 0o077 == 0, "private keys must not be group/world readable"
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
        assert cert.issuer == cert.subject
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365.25
        assert 4.9 < years < 5.1


def test_create_keys_twice_keeps_the_first_keys(host: Host) -> None:
    before = _digests(host.root / "var/lib/sbctl")
    proc = host.sbctl("create-keys")
    assert proc.returncode == 0, proc.stderr
    assert "Secure boot keys have already been created!" in proc.stdout
    assert _digests(host.root / "var/lib/sbctl") == before


# ---------------------------------------------------------------- enroll-keys


def test_enroll_keys_outside_setup_mode_fails_and_changes_nothing(host: Host) -> None:
    state = host.set_firmware(setup_mode=False, secure_boot=True)
    before = state.read_bytes()
    proc = host.sbctl("enroll-keys", "--microsoft")
    assert proc.returncode == 1
    assert "Your system is not in Setup Mode!" in proc.stderr
    assert "Enrolled keys" not in proc.stdout
    assert state.read_bytes() == before
    assert host.json("status")["setup_mode"] is False


def test_enroll_keys_with_microsoft_leaves_setup_mode(host: Host) -> None:
    assert host.json("status")["setup_mode"] is True
    proc = host.sbctl("enroll-keys", "--microsoft")
    assert proc.returncode == 0, proc.stderr
    assert "With vendor keys from microsoft" in proc.stdout
    assert "Enrolled keys to the EFI variables!" in proc.stdout
    status = host.json("status")
    assert status["setup_mode"] is False
    assert "microsoft" in status["vendors"]
    # Setup Mode is over: a second enrollment is refused.
    again = host.sbctl("enroll-keys", "--microsoft")
    assert again.returncode == 1 and "not in Setup Mode" in again.stderr


def test_enroll_keys_refuses_option_roms_without_microsoft(host: Host) -> None:
    state = host.set_firmware(setup_mode=True, option_roms=True)
    before = state.read_bytes()
    proc = host.sbctl("enroll-keys")
    assert proc.returncode == 1
    assert "Found OptionROM in the bootchain" in proc.stderr
    assert "--yes-this-might-brick-my-machine" in proc.stderr
    assert state.read_bytes() == before

    forced = host.sbctl("enroll-keys", "--yes-this-might-brick-my-machine")
    assert forced.returncode == 0, forced.stderr
    status = host.json("status")
    assert status["setup_mode"] is False
    assert "microsoft" not in status["vendors"]


def test_json_flag_silences_error_messages(host: Host) -> None:
    host.set_firmware(setup_mode=False)
    proc = host.sbctl("enroll-keys", "--json")
    assert proc.returncode == 1
    assert proc.stdout == "" and proc.stderr == ""


def test_reset_clears_the_platform_key(host: Host) -> None:
    assert host.sbctl("enroll-keys", "--microsoft").returncode == 0
    proc = host.sbctl("reset")
    assert proc.returncode == 0, proc.stderr
    assert "Removed Platform Key!" in proc.stdout
    assert host.json("status")["setup_mode"] is True


def test_export_esl_and_auth_files(host: Host) -> None:
    esl_dir, auth_dir = host.work / "esl", host.work / "auth"
    esl_dir.mkdir()
    auth_dir.mkdir()
    assert host.sbctl("enroll-keys", "--export", "esl", cwd=esl_dir).returncode == 0
    assert host.sbctl("enroll-keys", "--export", "auth", cwd=auth_dir).returncode == 0
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    for var in ("PK", "KEK", "db"):
        esl = (esl_dir / f"{var}.esl").read_bytes()
        der = x509.load_pem_x509_certificate(host.key(var, "pem").read_bytes()).public_bytes(Encoding.DER)
        assert esl.endswith(der), f"{var}.esl must carry our {var} certificate last"
        # An EFI_VARIABLE_AUTHENTICATION_2 update is a signed header plus the same list.
        auth = (auth_dir / f"{var}.auth").read_bytes()
        assert auth.endswith(esl) and len(auth) > len(esl) + 16
    # Exporting never touches the firmware.
    assert host.json("status")["setup_mode"] is True


# ---------------------------------------------------------------- sign / verify / list-files


def test_sign_and_verify_with_real_authenticode(host: Host) -> None:
    esp = host.work / "esp"
    signed = esp / "EFI/systemd/systemd-bootx64.efi"
    unsigned = esp / "EFI/BOOT/BOOTX64.EFI"
    for target in (signed, unsigned):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EFI_BINARY, target)
    (esp / "loader.conf").write_text("timeout 3\n")  # not a PE file: skipped
    db_pem = host.key("db", "pem")

    before = subprocess.run(["sbverify", "--cert", str(db_pem), str(signed)], capture_output=True)
    assert before.returncode != 0

    proc = host.sbctl("sign", "-s", str(signed))
    assert proc.returncode == 0, proc.stderr
    assert f"Signed {signed}" in proc.stdout

    check = subprocess.run(["sbverify", "--cert", str(db_pem), str(signed)], capture_output=True, text=True)
    assert check.returncode == 0
    assert "Signature verification OK" in check.stdout + check.stderr

    verified = {e["file_name"]: e["is_signed"] for e in host.json("verify")}
    assert verified == {str(signed): 1, str(unsigned): 0}

    again = host.sbctl("sign", "-s", str(signed))
    assert again.returncode == 0
    assert f"File has already been signed {signed}" in again.stdout


def test_sign_output_and_list_files(host: Host) -> None:
    source = host.work / "linux.efi"
    shutil.copy(EFI_BINARY, source)
    output = host.work / "esp/EFI/Linux/linux.efi"
    output.parent.mkdir(parents=True)
    proc = host.sbctl("sign", "--save", "--output", str(output), str(source))
    assert proc.returncode == 0, proc.stderr
    assert source.read_bytes() == EFI_BINARY.read_bytes(), "-o must leave the input alone"

    listed = host.json("list-files")
    assert listed == [{"file": str(source), "output_file": str(output), "is_signed": True}]

    output.unlink()
    verified = host.json("verify")
    assert {"file_name": str(output), "is_signed": -1} in verified


def test_sign_without_keys_fails(tmp_path: Path) -> None:
    fresh = _new_host(tmp_path)
    target = fresh.work / "a.efi"
    shutil.copy(EFI_BINARY, target)
    proc = fresh.sbctl("sign", str(target))
    assert proc.returncode == 1
    assert "db.key" in proc.stderr and "no such file or directory" in proc.stderr
    assert target.read_bytes() == EFI_BINARY.read_bytes()


# ---------------------------------------------------------------- command line


def test_unknown_flag_and_command_exit_1(host: Host) -> None:
    flag = host.sbctl("status", "--bogus")
    assert flag.returncode == 1
    assert flag.stderr.startswith("unknown flag: --bogus\n")
    assert "Usage:\n  sbctl status [flags]" in flag.stderr

    bad_value = host.sbctl("enroll-keys", "--partial", "nope")
    assert bad_value.returncode == 1
    assert 'invalid argument "nope" for "-p, --partial" flag' in bad_value.stderr

    command = host.sbctl("statsu")
    assert command.returncode == 1
    assert 'unknown command "statsu" for "sbctl"' in command.stdout
    assert "Did you mean this?\n\tstatus" in command.stdout


def test_install_writes_a_working_wrapper(host: Host, tmp_path: Path) -> None:
    from infratool_lab.sbctl import install

    wrapper = install(tmp_path / "sbin")
    assert wrapper == tmp_path / "sbin/sbctl"
    assert wrapper.read_text().startswith("#!/bin/sh\n")
    assert os.access(wrapper, os.X_OK)
    env = host.env()
    env.pop("PYTHONPATH")  # the wrapper must find infratool by itself
    proc = subprocess.run(
        [str(wrapper), "status", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["installed"] is True


# ---------------------------------------------------------------- firmware set-up


def test_status_fails_without_uefi(host: Host) -> None:
    host.set_firmware(uefi=False)
    proc = host.sbctl("status")
    assert proc.returncode == 1
    assert "system is not booted with UEFI" in proc.stderr


def test_secure_boot_turns_on_at_the_next_boot_after_enrollment(host: Host) -> None:
    from infratool_lab.sbctl import simulate_reboot

    assert host.sbctl("enroll-keys", "--microsoft").returncode == 0
    assert host.json("status")["secure_boot"] is False  # SecureBoot is a boot-time variable
    simulate_reboot(host.root / FIRMWARE)
    status = host.json("status")
    assert (status["setup_mode"], status["secure_boot"]) == (False, True)


# ---------------------------------------------------------------- real firmware (issue 20)

NIXPKGS = {"SBCTL_EMULATOR_DATABASE_PATH": "/etc/secureboot"}
"""nixpkgs builds sbctl with -X github.com/foxboron/sbctl.DatabasePath=/etc/secureboot."""
EFIVARS = "/sys/firmware/efi/efivars/"


def _copy_keys(created: Created, host: Host, directory: str = "var/lib/sbctl") -> None:
    shutil.copytree(created.host.root / "var/lib/sbctl", host.root / directory, copy_function=shutil.copy2)


def test_default_machine_has_vendor_keys_and_immutable_variables(tmp_path: Path, created: Created) -> None:
    host = _new_host(tmp_path)  # no firmware file: the emulator's default machine
    _copy_keys(created, host)
    status = host.json("status")
    assert status["setup_mode"] is True
    assert status["vendors"] == ["microsoft", "builtin-db", "builtin-KEK"]
    enrolled = host.json("list-enrolled-keys")
    assert enrolled["PK"] is None  # cleared to enter Setup Mode; KEK and db stay
    assert {c["Subject"]["CommonName"] for c in enrolled["KEK"]} == {
        "Microsoft Corporation KEK CA 2011",
        "Lab OEM KEK CA 2020",
    }

    proc = host.sbctl("enroll-keys", "--microsoft")
    assert proc.returncode == 1
    # util.CheckImmutable warns for each existing immutable file (PK does not exist), then
    # main.go prints ErrImmutable as advice on stdout.
    assert proc.stderr.splitlines() == [
        f"‼ File is immutable: {EFIVARS}KEK-8be4df61-93ca-11d2-aa0d-00e098032b8c",
        f"‼ File is immutable: {EFIVARS}db-d719b2cb-3d3a-4596-a3bc-dad00e67656f",
    ]
    assert proc.stdout == "You need to chattr -i files in efivarfs\n"
    assert not (host.root / FIRMWARE).exists()  # nothing written
    assert host.json("status")["setup_mode"] is True

    # -i skips the check; go-uefi clears the flag of each file it writes.
    done = host.sbctl("enroll-keys", "--microsoft", "--ignore-immutable")
    assert done.returncode == 0, done.stdout + done.stderr
    after = host.json("list-enrolled-keys")
    own_pk = host.key("PK", "pem").read_text()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(own_pk.encode()).public_bytes(Encoding.DER)
    import base64

    assert [base64.b64decode(c["Raw"]) for c in after["PK"]] == [der]
    assert len(after["KEK"]) == 3 and len(after["DB"]) == 6  # ours + Microsoft's 2 and 5
    assert "Lab OEM db CA 2020" not in {c["Subject"]["CommonName"] for c in after["DB"]}  # dropped


def test_list_enrolled_keys_json_has_go_certificate_fields(host: Host) -> None:
    empty = host.json("list-enrolled-keys")
    assert empty == {"DB": None, "KEK": None, "PK": None}  # a Go map: sorted keys, nil slices
    assert host.sbctl("enroll-keys", "--microsoft").returncode == 0
    listed = host.json("list-enrolled-keys")
    assert list(listed) == ["DB", "KEK", "PK"]
    pk = listed["PK"][0]
    assert list(pk)[:15] == [
        "Raw",
        "RawTBSCertificate",
        "RawSubjectPublicKeyInfo",
        "RawSubject",
        "RawIssuer",
        "Signature",
        "SignatureAlgorithm",
        "PublicKeyAlgorithm",
        "PublicKey",
        "Version",
        "SerialNumber",
        "Issuer",
        "Subject",
        "NotBefore",
        "NotAfter",
    ]
    assert pk["Subject"]["CommonName"] == "Platform Key" and pk["Version"] == 3
    assert pk["SignatureAlgorithm"] == 4 and pk["PublicKeyAlgorithm"] == 1  # SHA256WithRSA, RSA
    assert pk["PublicKey"]["E"] == 65537 and pk["PublicKey"]["N"].bit_length() == 4096
    assert pk["Subject"]["Names"] == [{"Type": [2, 5, 4, 3], "Value": "Platform Key"}]
    text = host.sbctl("list-enrolled-keys").stdout
    assert "PK:\n  Platform Key\n" in text


def test_nixpkgs_build_uses_etc_secureboot_and_says_so_every_run(tmp_path: Path, created: Created) -> None:
    host = _new_host(tmp_path)
    host.set_firmware(setup_mode=True)
    (host.root / "etc/secureboot").mkdir(parents=True)
    _copy_keys(created, host)  # keys in /var/lib/sbctl too: nixpkgs' sbctl still uses /etc/secureboot
    notice = "old configuration detected. Please use `sbctl setup --migrate`\n"

    status = host.sbctl("status", "--json", build=NIXPKGS)
    assert status.returncode == 0 and status.stderr == notice  # --json does not silence it
    assert json.loads(status.stdout)["installed"] is False  # /etc/secureboot/keys: not there
    made = host.sbctl("create-keys", build=NIXPKGS)
    assert made.returncode == 0 and made.stderr == notice
    assert sorted(p.name for p in (host.root / "etc/secureboot/keys").iterdir()) == ["KEK", "PK", "db"]
    assert (host.root / "etc/secureboot/GUID").exists()

    # An upstream build ignores /etc/secureboot: no notice, /var/lib/sbctl.
    upstream = host.sbctl("status", "--json")
    assert upstream.stderr == "" and json.loads(upstream.stdout)["installed"] is True

    # Its real error comes after the notice.
    failed = host.sbctl("sign", "/nonexistent", build=NIXPKGS)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[0] == notice.strip() and len(failed.stderr.splitlines()) == 2


def test_setup_migrate_moves_the_legacy_directory(tmp_path: Path, created: Created) -> None:
    host = _new_host(tmp_path)
    host.set_firmware(setup_mode=True)
    _copy_keys(created, host, "etc/secureboot")
    (host.root / "etc/secureboot/files.db").write_text("{}")
    before = _digests(host.root / "etc/secureboot/keys")
    modes = {p.name: p.stat().st_mode for p in (host.root / "etc/secureboot/keys").rglob("*")}

    proc = host.sbctl("setup", "--migrate", build=NIXPKGS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "Moving files...✓ \n"
    assert not (host.root / "etc/secureboot").exists()
    keys = host.root / "var/lib/sbctl/keys"
    assert _digests(keys) == before
    assert {p.name: p.stat().st_mode for p in keys.rglob("*")} == modes
    assert (host.root / "var/lib/sbctl/files.json").read_text() == "{}"
    after = host.sbctl("status", "--json", build=NIXPKGS)
    assert after.stderr == "" and json.loads(after.stdout)["installed"] is True

    # Keys in both places: migrate does nothing, and sbctl stays on /etc/secureboot.
    _copy_keys(created, host, "etc/secureboot")
    again = host.sbctl("setup", "--migrate", build=NIXPKGS)
    assert again.returncode == 0 and "sbctl has already been migrated!" in again.stdout
    assert (host.root / "etc/secureboot/keys").is_dir()
    assert host.sbctl("setup", build=NIXPKGS).returncode == 1


def test_microsoft_certificates_and_commands_depend_on_the_version(host: Host) -> None:
    old = {"SBCTL_EMULATOR_VERSION": "0.16"}
    assert host.sbctl("version", build=old).stdout == "0.16\n"
    assert host.sbctl("enroll-keys", "--microsoft", build=old).returncode == 0
    listed = host.json("list-enrolled-keys")
    names = {c["Subject"]["CommonName"] for var in ("KEK", "DB") for c in listed[var]}
    assert "Microsoft Option ROM UEFI CA 2023" not in names
    assert len(listed["DB"]) == 3 and len(listed["KEK"]) == 2  # ours + the 2011 certificates

    ancient = host.sbctl("version", build={"SBCTL_EMULATOR_VERSION": "0.14"})
    assert ancient.returncode == 1 and 'unknown command "version" for "sbctl"' in ancient.stdout
