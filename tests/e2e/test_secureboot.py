"""Secure Boot on the lab: the real CLI against real sshd hosts running the sbctl emulator.

snix, slax and brix get the emulator (a copy in each host's private
/usr/local/sbin, run by /usr/bin/python3); nixtv-player has no sbctl. Each
test sets the emulated firmware through the host's private firmware file, the
one step real sbctl cannot take, and asserts on real state: key files and
their hashes, the firmware file's bytes, sops files that decrypt, generated
Nix that nix-instantiate parses. RSA-4096 key creation takes seconds, so one
key set is made per worker and copied where a test needs existing keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PLAYBOOKS, ROOT, files_containing
from exectrace import both_ends
from helpers import digests, nix_eval, nix_parse, ok
from infratool_lab.sbctl import LAB_FIRMWARE_FILE, provision_lab, set_lab_firmware

from infratool.errors import RefusedError
from infratool.secrets.store import SopsStore
from infratool.tasks.secureboot import render_flake_input, render_module
from infratool.tasks.secureboot.hostinfo import Bundle, HostView, KeyFile
from infratool.tasks.secureboot.sbctlstate import SbctlState

PLAYBOOK = PLAYBOOKS / "secureboot.yaml"
ENROLL_PLAYBOOK = PLAYBOOKS / "secureboot-enroll.yaml"
DOC = ROOT / "docs" / "secure-boot.md"
KEYDIR = "/var/lib/sbctl"
ESP = "/var/lib/sbctl-emulator/esp"
EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")

pytestmark = pytest.mark.skipif(
    not (shutil.which("sbsign") and EFI.exists() and Path("/usr/bin/python3").exists()),
    reason="needs sbsigntool, systemd-boot-efi and /usr/bin/python3",
)


@pytest.fixture(scope="session")
def made_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sbctl key set (``<root>/var/lib/sbctl``), made once per worker by the emulator itself."""
    root = tmp_path_factory.mktemp("keys")
    env = {**os.environ, "SBCTL_EMULATOR_ROOT": str(root), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "infratool_lab.sbctl", "create-keys"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return root / "var/lib/sbctl"


@pytest.fixture
def sb(fleet):
    """The fleet lab with sbctl on snix, slax and brix (fresh machines in Setup Mode)."""
    provision_lab(fleet)
    return fleet


def give_keys(lab, name: str, made: Path) -> dict[str, str]:
    """Copy the made key set into ``name``'s /var/lib/sbctl (modes kept); returns its digests."""
    target = lab.host(name).path(KEYDIR)
    shutil.copytree(made, target, copy_function=shutil.copy2)
    return digests(target)


def sbctl(lab, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run sbctl inside a lab host (as an operator at its console would)."""
    return lab.exec(name, ["sbctl", *args])


def status_json(lab, name: str) -> dict[str, Any]:
    proc = sbctl(lab, name, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def firmware_bytes(lab, name: str) -> bytes:
    return lab.host(name).path(LAB_FIRMWARE_FILE).read_bytes()


def back_up(cli, lab, hosts: str) -> None:
    """Run the secureboot playbook on ``hosts`` (keys must exist there already)."""
    ok(cli("-i", lab.inventory_path, "run", PLAYBOOK, "--yes", "--limit", hosts))


# ---------------------------------------------------------------- the emulator on lab hosts


def test_emulator_runs_on_lab_hosts_with_the_system_python(sb):
    wrapper = sb.host("snix").path("/usr/local/sbin/sbctl").read_text()
    assert "/usr/bin/python3 -I" in wrapper and "sbctl.d" in wrapper
    certs = sb.host("snix").path("/usr/local/sbin/sbctl.d/sbctl_emulator/sbctl_data/microsoft/db")
    assert len(list(certs.iterdir())) == 5
    assert status_json(sb, "snix")["setup_mode"] is True
    # The firmware is private per host, and the ESP is not the shared /boot.
    set_lab_firmware(sb, "slax", setup_mode=False)
    assert status_json(sb, "slax")["setup_mode"] is False
    assert status_json(sb, "snix")["setup_mode"] is True
    assert json.loads(firmware_bytes(sb, "snix"))["esp"] == ESP
    assert sbctl(sb, "nixtv-player", "status").returncode != 0  # not installed there


# ---------------------------------------------------------------- status


def _documented_fields() -> set[str]:
    """Field names of the JSON table in docs/secure-boot.md (rows like "| `name` | ... |")."""
    text = DOC.read_text()
    section = text[text.index("## `infratool secureboot status --json`") :]
    section = section[: section.index("\n## ", 5)]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


def test_status_table_and_json_for_all_four_hosts(sb, cli, made_keys):
    give_keys(sb, "snix", made_keys)  # keys, no backup
    set_lab_firmware(sb, "slax", setup_mode=False, secure_boot=False)  # factory keys, no sbctl keys
    set_lab_firmware(sb, "brix", uefi=False)  # legacy BIOS boot
    inv = sb.inventory_path

    table = ok(cli("-i", inv, "secureboot", "status"))
    verdicts = {
        "snix": "needs-backup",
        "slax": "needs-keys",
        "brix": "no-uefi",
        "nixtv-player": "sbctl-missing",
    }
    for host, verdict in verdicts.items():
        row = next(line for line in table.stdout.splitlines() if line.strip().startswith(host + " "))
        assert verdict in row, row
    assert "not installed" in table.stdout

    data = json.loads(ok(cli("-i", inv, "--json", "secureboot", "status")).stdout)["hosts"]
    assert [r["host"] for r in data] == ["snix", "slax", "brix", "nixtv-player"]
    documented = _documented_fields()
    for row in data:
        assert set(row) == documented, set(row) ^ documented
    by = {r["host"]: r for r in data}
    assert by["snix"]["keys_present"] and by["snix"]["pki_bundle"] == KEYDIR
    assert by["snix"]["setup_mode"] is True and by["snix"]["backup"]["state"] == "missing"
    assert len(by["snix"]["unsigned_files"]) == 2  # the lab ESP's unsigned systemd-boot copies
    assert by["slax"]["setup_mode"] is False and by["slax"]["keys_present"] is False
    assert by["brix"]["uefi"] is False and by["nixtv-player"]["sbctl"] is False
    assert not any(r["ready"] for r in data)


def test_status_says_a_backup_is_present_but_unreadable_here_without_an_age_key(sb, cli, made_keys, tmp_path):
    """Issue 17: without an age identity the backup is not "missing": it exists and only cannot be read here.

    Before, `secureboot status` said needs-backup (run the backup playbook:
    wrong, and the backup would refuse); with the run's identity check it
    stopped with exit 3 and no report at all.
    """
    give_keys(sb, "snix", made_keys)
    back_up(cli, sb, "snix")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.key").write_text(
        "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n"
    )
    (elsewhere / "other.key").chmod(0o600)
    # An identity that is no recipient of the backup (and no ~/.ssh key to fall back to).
    env = {"SOPS_AGE_KEY_FILE": str(elsewhere / "other.key"), "HOME": str(elsewhere)}
    inv = sb.inventory_path
    table = ok(cli("-i", inv, "secureboot", "status", "--limit", "snix", env=env))
    row = next(line for line in table.stdout.splitlines() if line.strip().startswith("snix "))
    assert "backup-unreadable" in row and "needs-backup" not in table.stdout, table.stdout
    assert "backup present, not readable here: set SOPS_AGE_KEY_FILE" in " ".join(table.stdout.split())
    data = json.loads(ok(cli("-i", inv, "--json", "secureboot", "status", "--limit", "snix", env=env)).stdout)
    (snix,) = data["hosts"]
    assert snix["verdict"] == "backup-unreadable" and snix["backup"]["state"] == "unreadable-here"
    assert snix["keys_present"] and not snix["ready"]
    # With the identity back, the same backup is verified.
    again = json.loads(ok(cli("-i", inv, "--json", "secureboot", "status", "--limit", "snix")).stdout)
    assert again["hosts"][0]["backup"]["state"] == "verified"


def test_an_exception_planning_one_host_fails_that_host_only(sb, monkeypatch):
    """Secure Boot tasks plan each host in the runner's pool: a bug on one host costs that host only."""
    from infratool import inventory, playbook
    from infratool.options import RunOptions
    from infratool.runner import Runner
    from infratool.tasks.secureboot import report

    real = report.build

    def build(view, store, pki_bundle=None):
        if view.name == "slax":
            raise ValueError("boom on slax")
        return real(view, store, pki_bundle)

    monkeypatch.setattr(report, "build", build)
    inv_obj = inventory.load(sb.inventory_path)
    with Runner(inv_obj, playbook.load(PLAYBOOK, inv_obj), RunOptions()) as runner:
        the_plan = runner.plan()
    assert "ValueError: boom on slax" in the_plan.failures["slax"]
    assert not any("boom" in m for h, m in the_plan.failures.items() if h != "slax")
    assert sorted(the_plan.reports) == ["brix", "nixtv-player", "snix"]
    assert the_plan.reports["snix"]["secureboot.status"]["verdict"] == "needs-keys"
    # The other hosts went on through the playbook: snix gets its keys, its backup, its module.
    assert {c.task for c in the_plan.for_host("snix")} == {"secureboot.create_keys", "secureboot.backup"}


# ---------------------------------------------------------------- keys, backup, lanzaboote


def test_playbook_creates_missing_keys_backs_up_and_converges(sb, cli, made_keys):
    inv = sb.inventory_path
    before = give_keys(sb, "snix", made_keys)
    give_keys(sb, "brix", made_keys)
    run = cli("-i", inv, "run", PLAYBOOK, "--yes")
    assert run.returncode == 1, run.stdout + run.stderr  # nixtv-player has no sbctl
    assert "snix: 1 change(s)" in run.stdout  # existing keys: backup only, never created
    assert "slax: 2 change(s)" in run.stdout and "sbctl create-keys" in run.stdout
    assert "nixtv-player: sbctl is not installed" in run.stdout
    assert digests(sb.host("snix").path(KEYDIR)) == before, "existing keys must never be touched"
    slax_key = sb.host("slax").path(KEYDIR + "/keys/db/db.key")
    assert slax_key.stat().st_mode & 0o777 == 0o400

    store = SopsStore(sb.flake_dir / "secrets")
    for host in ("snix", "slax", "brix"):
        values = store.read(f"secureboot/{host}.yaml")
        stored = base64.b64decode(values["secureboot/files/keys/db/db.key"].reveal_bytes())
        assert stored == sb.host(host).path(KEYDIR + "/keys/db/db.key").read_bytes()
        # The repo holds only ciphertext.
        raw = (sb.flake_dir / f"secrets/secureboot/{host}.yaml").read_text()
        assert "PRIVATE KEY" not in raw and "ENC[AES256_GCM" in raw

    again = cli("-i", inv, "plan", PLAYBOOK)
    assert again.returncode == 1 and "Plan: 0 change(s)" in again.stdout, again.stdout
    assert "nixtv-player: sbctl is not installed" in again.stdout

    for rel in ("hosts/snix/generated/lanzaboote.nix", "generated/lanzaboote-flake-input.nix"):
        nix_parse(sb.flake_dir / rel)
    stub = '{ lib = { mkForce = x: { forced = x; }; }; pkgs = { sbctl = "sbctl"; }; }'
    module = nix_eval(f"import {sb.flake_dir}/hosts/snix/generated/lanzaboote.nix {stub}")
    assert module["boot"]["lanzaboote"] == {"enable": True, "pkiBundle": KEYDIR}
    assert module["boot"]["loader"]["systemd-boot"]["enable"] == {"forced": False}


# ---------------------------------------------------------------- backup, disk loss, restore, canary


def test_backup_wipe_restore_is_bit_for_bit_and_never_leaks(sb, cli, made_keys, tmp_path, _private_audit_log):
    inv = sb.inventory_path
    give_keys(sb, "snix", made_keys)
    efi = f"{ESP}/EFI/BOOT/BOOTX64.EFI"
    assert sbctl(sb, "snix", "sign", "-s", efi).returncode == 0
    key_pem = (made_keys / "keys/db/db.key").read_bytes()
    canaries = [key_pem.decode().splitlines()[5], base64.b64encode(key_pem).decode()[100:160]]

    with both_ends(sb, cli, tmp_path / "execs") as seen:
        first = seen.cli("-v", "-i", inv, "run", PLAYBOOK, "--yes", "--limit", "snix")
        ok(first)
        keys = sb.host("snix").path(KEYDIR)
        before = digests(keys, keys_only=True)  # sbctl's files.json lists signed files: not keys
        shutil.rmtree(keys)  # the disk is lost; the backup lives in the repo
        lost = json.loads(
            ok(seen.cli("-i", inv, "secureboot", "status", "--json", "--limit", "snix")).stdout
        )["hosts"]
        assert lost[0]["verdict"] == "needs-restore"
        fresh = seen.cli("-i", inv, "plan", PLAYBOOK, "--limit", "snix")  # never new keys over a backup
        assert fresh.returncode == 1 and "restore them (infratool secureboot restore snix)" in fresh.stdout
        # A restore planned as data carries the files' names and hashes, never their
        # content: a saved plan of it holds no key (the action reads sops again).
        from infratool import inventory, playbook
        from infratool.options import RunOptions
        from infratool.runner import Runner

        book = tmp_path / "restore.yaml"
        book.write_text("tasks:\n  - task: secureboot.restore\n")
        inv_obj = inventory.load(inv)
        with Runner(inv_obj, playbook.load(book, inv_obj), RunOptions(limit="snix")) as runner:
            (planned,) = runner.plan().changes
        assert planned.op == "secureboot.restore" and len(planned.args["paths"]) == 7
        assert all(c not in json.dumps(planned.args) for c in canaries), planned.args
        restored = ok(seen.cli("-v", "-i", inv, "secureboot", "restore", "snix", "--yes"))
    seen.assert_recorded(min_sessions=4)
    assert digests(keys) == before
    assert len(before) == 7
    for rel in ("keys/PK/PK.key", "keys/KEK/KEK.key", "keys/db/db.key"):
        assert (keys / rel).stat().st_mode & 0o777 == 0o400 and (keys / rel).stat().st_uid == 0
    verified = json.loads(sbctl(sb, "snix", "verify", "--json").stdout)
    assert {"file_name": efi, "is_signed": 1} in verified
    assert ok(cli("-i", inv, "secureboot", "restore", "snix", "--yes")).stdout.count("no changes") == 1

    # Canary: private key material in no output, argv, audit record, repo file or temp file.
    outputs = first.stdout + first.stderr + restored.stdout + restored.stderr
    for canary in canaries:
        assert canary not in outputs
        assert seen.hits(canary) == []
        assert canary not in _private_audit_log.read_text()
        assert files_containing(sb.flake_dir, canary) == []
        assert files_containing(tmp_path / "controller-tmp", canary) == []
        for host in ("snix", "slax", "brix", "nixtv-player"):
            assert files_containing(sb.host(host).path("/tmp"), canary) == []
    leftovers = [p for p in keys.rglob("*") if p.name.startswith(".")]
    assert leftovers == []

    # Different keys on the host are never overwritten by a restore.
    (keys / "keys/db/db.key").chmod(0o600)
    (keys / "keys/db/db.key").write_bytes(b"someone else's key\n")
    refused = cli("-i", inv, "secureboot", "restore", "snix", "--yes")
    assert refused.returncode == 1
    assert "already holds different keys (keys/db/db.key)" in refused.stdout
    assert (keys / "keys/db/db.key").read_bytes() == b"someone else's key\n"


def test_saved_plans_create_back_up_and_restore_keys_in_a_fresh_process(sb, cli, tmp_path):
    """`plan -o` then `apply`: the Secure Boot actions work from their args alone, in another process."""
    inv = sb.inventory_path
    saved = tmp_path / "keys.plan.json"
    ok(cli("-i", inv, "plan", PLAYBOOK, "--limit", "snix", "-o", saved))
    assert sb.host("snix").path(f"{KEYDIR}/keys/PK/PK.key").exists() is False
    applied = ok(cli("-i", inv, "apply", saved, "--yes"))
    keys = sb.host("snix").path(KEYDIR)
    before = digests(keys, keys_only=True)
    assert len(before) == 7, applied.stdout
    backup = SopsStore(sb.flake_dir / "secrets").read("secureboot/snix.yaml")
    assert backup, "no backup written"
    assert cli("-i", inv, "plan", PLAYBOOK, "--limit", "snix", "--detailed-exitcode").returncode == 0

    key_pem = (keys / "keys/db/db.key").read_bytes()
    shutil.rmtree(keys)  # the disk is lost
    book = tmp_path / "restore.yaml"
    book.write_text("tasks:\n  - task: secureboot.restore\n")
    restore_plan = tmp_path / "restore.plan.json"
    ok(cli("-i", inv, "plan", book, "--limit", "snix", "-o", restore_plan))
    text = restore_plan.read_text()
    assert "secureboot.restore" in text
    for canary in (key_pem.decode().splitlines()[5], base64.b64encode(key_pem).decode()[100:160]):
        assert canary not in text  # the action reads the backup again when it applies
    ok(cli("-i", inv, "apply", restore_plan, "--yes"))
    assert digests(keys, keys_only=True) == before


# ---------------------------------------------------------------- enrollment


def test_enroll_refusals_touch_no_firmware(sb, cli, made_keys, tmp_path):
    inv = sb.inventory_path
    hosts = ("snix", "slax", "brix")
    for host in hosts:
        give_keys(sb, host, made_keys)
    back_up(cli, sb, ",".join(hosts))
    set_lab_firmware(sb, "snix", setup_mode=False, secure_boot=False)  # User Mode
    (sb.flake_dir / "secrets/secureboot/slax.yaml").unlink()  # no backup
    firmware = {h: firmware_bytes(sb, h) for h in hosts}

    def refused(*args: str, code: int = 1) -> dict[str, str]:
        result = cli("-i", inv, *args)
        assert result.returncode == code, result.stdout + result.stderr
        for host in hosts:
            assert firmware_bytes(sb, host) == firmware[host], f"firmware of {host} changed"
        lines = (result.stdout + result.stderr).splitlines()
        return {h: next((line for line in lines if line.startswith(f"{h}: ")), "") for h in hosts} | {
            "all": result.stdout + result.stderr
        }

    # The shipped playbook has `confirm: []`: nothing can be enrolled with it as it is.
    out = refused("run", ENROLL_PLAYBOOK, "--yes", "--limit", ",".join(hosts))
    assert "enrollment refused, nothing written to firmware" in out["snix"]
    assert "not in Setup Mode" in out["snix"] and "not confirmed" in out["snix"]
    assert "no key backup in secrets/secureboot/slax.yaml" in out["slax"]
    assert "not confirmed" in out["brix"] and "confirm: [enroll-secure-boot-keys-on-brix]" in out["brix"]

    brix_backup = sb.flake_dir / "secrets/secureboot/brix.yaml"
    brix_backup.write_text(
        brix_backup.read_text().replace("ENC[AES256_GCM,data:", "ENC[AES256_GCM,data:AA", 1)
    )
    confirm = [arg for h in hosts for arg in ("--confirm", f"enroll-secure-boot-keys-on-{h}")]
    out = refused("secureboot", "enroll", *hosts, *confirm, "--yes")
    assert "not in Setup Mode" in out["snix"] and "not confirmed" not in out["snix"]
    assert "no verified backup of exactly these keys" in out["slax"]
    assert "secrets/secureboot/brix.yaml cannot be used" in out["brix"] and "tampered" in out["brix"]

    assert "No such option '--yolo'" in refused("secureboot", "enroll", "snix", "--yolo", code=3)["all"]
    bad = tmp_path / "enroll.yaml"
    doc = yaml.safe_load(ENROLL_PLAYBOOK.read_text())
    doc["tasks"][1]["with"]["force"] = True
    bad.write_text(yaml.safe_dump(doc))
    out = refused("run", bad, "--yes", code=3)
    assert f"{bad}:" in out["all"] and "unknown parameter 'force'" in out["all"]

    from infratool import inventory, playbook
    from infratool.errors import InputError
    from infratool.options import RunOptions
    from infratool.runner import Runner

    inv_obj = inventory.load(inv)
    doc["tasks"][1]["with"] = {"confirm": ["enroll-secure-boot-keys-on-nosuchhost"]}
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="naming a host of the inventory"):
        playbook.load(bad, inv_obj)

    # The timer's runs are unattended: enrollment refuses whatever else holds.
    set_lab_firmware(sb, "snix", setup_mode=True)
    firmware["snix"] = firmware_bytes(sb, "snix")
    doc["tasks"][1]["with"] = {"confirm": ["enroll-secure-boot-keys-on-snix"]}
    bad.write_text(yaml.safe_dump(doc))
    with Runner(inv_obj, playbook.load(bad, inv_obj), RunOptions(limit="snix", unattended=True)) as runner:
        the_plan = runner.plan()
        result = runner.apply(the_plan)
    assert "never runs unattended" in the_plan.failures["snix"]
    assert result.exit_code == 1 and firmware_bytes(sb, "snix") == firmware["snix"]


def test_enroll_in_setup_mode_keeps_microsoft_keys_unless_opted_out(sb, cli, made_keys, tmp_path):
    inv = sb.inventory_path
    for host in ("snix", "slax"):
        give_keys(sb, host, made_keys)
    back_up(cli, sb, "snix,slax")
    # The shipped playbook, confirmed for snix; slax opts out of Microsoft's keys.
    doc = yaml.safe_load(ENROLL_PLAYBOOK.read_text())
    doc["tasks"][1]["with"]["confirm"] = ["enroll-secure-boot-keys-on-snix"]
    doc["tasks"][1]["hosts"] = "snix"
    opt_out = {"microsoft": False, "confirm": ["enroll-secure-boot-keys-on-slax"]}
    doc["tasks"].append({"task": "secureboot.enroll", "hosts": "slax", "with": opt_out})
    book = tmp_path / "enroll.yaml"
    book.write_text(yaml.safe_dump(doc, sort_keys=False))

    run = ok(cli("-i", inv, "run", book, "--yes", "--limit", "snix,slax"))
    snix_plan, slax_plan = run.stdout.split("\nslax: ")
    assert "Writes the UEFI Secure Boot variables of snix" in snix_plan
    assert (
        "`sbctl enroll-keys --ignore-immutable --microsoft`" in snix_plan
        and "Microsoft keys: KEPT" in snix_plan
    )
    assert "+ PK  ← this host's Platform Key (CN=Platform Key" in snix_plan
    assert (
        "`sbctl enroll-keys --ignore-immutable`" in slax_plan and "Microsoft keys: NOT enrolled" in slax_plan
    )
    snix, slax = status_json(sb, "snix"), status_json(sb, "slax")
    assert snix["setup_mode"] is False and "microsoft" in snix["vendors"]
    assert slax["setup_mode"] is False and "microsoft" not in slax["vendors"]

    # Converged: the same enrollment plans nothing; after a reboot Secure Boot is on.
    again = cli("-i", inv, "plan", book, "--limit", "snix,slax", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    from infratool_lab.sbctl import simulate_reboot

    simulate_reboot(sb.host("snix").path(LAB_FIRMWARE_FILE))
    rows = json.loads(ok(cli("-i", inv, "secureboot", "status", "--json", "--limit", "snix,slax")).stdout)[
        "hosts"
    ]
    assert [r["verdict"] for r in rows] == ["enabled", "reboot-pending"]
    assert rows[0]["secure_boot"] is True and rows[0]["enrolled"]["microsoft"] is True


# ---------------------------------------------------------------- pure rules


def _bundle(directory: str, seed: str) -> Bundle:
    files = {
        p: KeyFile(p, 0o400, "root", "root", hashlib.sha256(f"{seed}{p}".encode()).hexdigest())
        for p in ("GUID", *(f"keys/{v}/{v}.{e}" for v in ("PK", "KEK", "db") for e in ("key", "pem")))
    }
    return Bundle(directory, True, files)


def test_key_directory_detection():
    state = SbctlState(path="/usr/bin/sbctl")
    legacy_only = HostView(
        "h", state, {KEYDIR: Bundle(KEYDIR), "/etc/secureboot": _bundle("/etc/secureboot", "a")}
    )
    assert legacy_only.keys().directory == "/etc/secureboot"
    assert 'pkiBundle = "/etc/secureboot";' in render_module(legacy_only.keys().directory)
    same = HostView(
        "h", state, {KEYDIR: _bundle(KEYDIR, "a"), "/etc/secureboot": _bundle("/etc/secureboot", "a")}
    )
    assert same.keys().directory == KEYDIR
    different = HostView(
        "h", state, {KEYDIR: _bundle(KEYDIR, "a"), "/etc/secureboot": _bundle("/etc/secureboot", "b")}
    )
    with pytest.raises(RefusedError, match="hold different Secure Boot keys"):
        different.keys()
    assert different.keys("/etc/secureboot").directory == "/etc/secureboot"
    assert HostView("h", state, {KEYDIR: Bundle(KEYDIR)}).keys() is None
    assert 'url = "github:nix-community/lanzaboote/' in render_flake_input(
        "github:nix-community/lanzaboote/v1.0.0"
    )


# ---------------------------------------------------------------- real firmware (issue 20)


def _enroll_book(tmp_path: Path, host: str, **extra: Any) -> Path:
    doc = yaml.safe_load(ENROLL_PLAYBOOK.read_text())
    doc["tasks"][1]["hosts"] = host
    doc["tasks"][1]["with"] = {"confirm": [f"enroll-secure-boot-keys-on-{host}"], **extra}
    book = tmp_path / f"enroll-{host}.yaml"
    book.write_text(yaml.safe_dump(doc, sort_keys=False))
    return book


def _enrolled(lab, name: str) -> dict[str, list[str]]:
    """SHA-256 of the DER certificates per variable, from `sbctl list-enrolled-keys --json` on the host."""
    data = json.loads(sbctl(lab, name, "list-enrolled-keys", "--json").stdout)
    return {
        var: [hashlib.sha256(base64.b64decode(c["Raw"])).hexdigest() for c in data[key] or []]
        for var, key in (("PK", "PK"), ("KEK", "KEK"), ("db", "DB"))
    }


def _cert_sha(pem: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(
        x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(Encoding.DER)
    ).hexdigest()


def test_enroll_on_the_default_machine_clears_immutable_and_verifies(sb, cli, made_keys, tmp_path):
    """The emulator's default machine: vendor keys in KEK/db, immutable efivars, Setup Mode."""
    inv = sb.inventory_path
    give_keys(sb, "snix", made_keys)
    back_up(cli, sb, "snix")
    before = _enrolled(sb, "snix")
    assert before["PK"] == [] and len(before["KEK"]) == 2 and len(before["db"]) == 3
    # What sbctl itself does on this machine without -i: stops, nothing written.
    plain = sbctl(sb, "snix", "enroll-keys", "--microsoft")
    assert plain.returncode == 1 and b"You need to chattr -i files in efivarfs" in plain.stdout

    book = _enroll_book(tmp_path, "snix")
    plan = cli("-i", inv, "plan", book, "--limit", "snix")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    text = plan.stdout
    assert "`sbctl enroll-keys --ignore-immutable --microsoft`" in text
    assert "Immutable: the kernel marks existing efivarfs files immutable" in text
    assert "/sys/firmware/efi/efivars/KEK-8be4df61" in text and "/sys/firmware/efi/efivars/PK-" not in text
    assert "Dropped from the firmware" in text
    assert "- KEK Lab OEM KEK CA 2020" in text and "- db  Lab OEM db CA 2020" in text
    assert "Microsoft Option ROM UEFI CA 2023" in text  # sbctl 0.18 enrolls the 2023 set
    assert "Microsoft Corporation KEK CA 2011 (sha256" not in text  # re-enrolled, not dropped

    ok(cli("-i", inv, "run", book, "--yes", "--limit", "snix"))
    after = _enrolled(sb, "snix")
    keys = sb.host("snix").path(KEYDIR) / "keys"
    assert after["PK"] == [_cert_sha(keys / "PK/PK.pem")]
    assert _cert_sha(keys / "KEK/KEK.pem") in after["KEK"] and _cert_sha(keys / "db/db.pem") in after["db"]
    assert len(after["KEK"]) == 3 and len(after["db"]) == 6
    again = cli("-i", inv, "plan", book, "--limit", "snix", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr


def test_enroll_with_an_old_sbctl_lists_only_the_2011_certificates(sb, cli, made_keys, tmp_path):
    from infratool_lab.sbctl import SbctlBuild, install_on_lab_host

    install_on_lab_host(sb, "slax", build=SbctlBuild(version="0.16"))
    give_keys(sb, "slax", made_keys)
    back_up(cli, sb, "slax")
    book = _enroll_book(tmp_path, "slax", firmware_builtin=["db"])
    run = ok(cli("-i", sb.inventory_path, "run", book, "--yes", "--limit", "slax"))
    assert "`sbctl enroll-keys --ignore-immutable --microsoft --firmware-builtin=db`" in run.stdout
    assert (
        "Microsoft: Microsoft Corporation UEFI CA 2011, Microsoft Windows Production PCA 2011 (2"
        in run.stdout
    )
    assert "sbctl 0.16 enrolls only Microsoft's 2011 certificates" in run.stdout
    assert (
        "Lab OEM db CA 2020 (sha256:" in run.stdout
        and "(kept if it is one of the firmware's built-in" in run.stdout
    )
    after = _enrolled(sb, "slax")
    assert len(after["KEK"]) == 2  # ours + Microsoft's KEK CA 2011; the OEM's KEK is gone
    assert len(after["db"]) == 4  # ours + 2 Microsoft 2011 + the OEM's built-in db certificate


def test_enroll_without_tpm_eventlog_and_microsoft_is_refused_by_sbctl(sb, cli, made_keys, tmp_path):
    give_keys(sb, "brix", made_keys)
    back_up(cli, sb, "brix")
    set_lab_firmware(sb, "brix", tpm_eventlog=False)
    firmware = firmware_bytes(sb, "brix")
    book = _enroll_book(tmp_path, "brix", microsoft=False)
    run = cli("-i", sb.inventory_path, "run", book, "--yes", "--limit", "brix")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Could not find any TPM Eventlog in the system" in run.stdout + run.stderr
    assert firmware_bytes(sb, "brix") == firmware
    values = SopsStore(sb.flake_dir / "secrets").read("secureboot/brix.yaml")
    assert "secureboot/enrolled" not in values  # no enrollment recorded


def test_nixpkgs_sbctl_uses_etc_secureboot_then_migrates(sb, cli, made_keys, tmp_path):
    from infratool_lab.sbctl import NIXPKGS, etc_secureboot, install_on_lab_host

    inv = sb.inventory_path
    install_on_lab_host(sb, "snix", build=NIXPKGS)
    legacy = etc_secureboot(sb, "snix")
    shutil.copytree(made_keys, legacy, dirs_exist_ok=True, copy_function=shutil.copy2)
    (legacy / "files.db").write_text("{}")
    old_keys = digests(legacy, keys_only=True)

    rows = json.loads(ok(cli("-i", inv, "secureboot", "status", "--json", "--limit", "snix")).stdout)["hosts"]
    assert rows[0]["sbctl_dir"] == "/etc/secureboot" and rows[0]["sbctl_build"] == "nixpkgs"
    assert rows[0]["pki_bundle"] == "/etc/secureboot" and rows[0]["installed"] is True
    assert any("old configuration detected" in w for w in rows[0]["warnings"])
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes", "--limit", "snix"))
    module = (sb.flake_dir / "hosts/snix/generated/lanzaboote.nix").read_text()
    assert 'pkiBundle = "/etc/secureboot";' in module

    # infratool migrates, as sbctl asks on every run, and replans what must follow the move.
    moved = ok(cli("-i", inv, "secureboot", "migrate", "snix", "--yes"))
    assert "`sbctl setup --migrate`" in moved.stdout
    assert not legacy.exists() and digests(sb.host("snix").path(KEYDIR), keys_only=True) == old_keys
    replan = moved.stdout[moved.stdout.index("After the migration") :]
    assert "~ bundle: /etc/secureboot → /var/lib/sbctl (same files: the keys moved)" in replan
    assert 'pkiBundle = "/var/lib/sbctl"' in replan
    again = ok(cli("-i", inv, "secureboot", "migrate", "snix", "--yes")).stdout
    assert "snix: no changes" in again.split("After the migration")[0]
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes", "--limit", "snix"))
    assert (
        'pkiBundle = "/var/lib/sbctl";' in (sb.flake_dir / "hosts/snix/generated/lanzaboote.nix").read_text()
    )
    manifest = SopsStore(sb.flake_dir / "secrets").read("secureboot/snix.yaml")["secureboot/manifest"]
    assert json.loads(manifest.reveal_bytes())["bundle"] == "/var/lib/sbctl"
    assert "Plan: 0 change(s)" in cli("-i", inv, "plan", PLAYBOOK, "--limit", "snix").stdout

    # An empty /etc/secureboot appears again: nixpkgs' sbctl switches back to it, sees no keys,
    # and `setup --migrate` would do nothing. Enrollment says so instead of the notice.
    etc_secureboot(sb, "snix")
    refused = cli(
        "-i", inv, "secureboot", "enroll", "snix", "--confirm", "enroll-secure-boot-keys-on-snix", "--yes"
    )
    assert refused.returncode == 1
    out = refused.stdout + refused.stderr
    assert "nixpkgs' sbctl uses /etc/secureboot because that directory exists" in out
    assert "mv /etc/secureboot /etc/secureboot.old" in out


def test_restore_refuses_entries_outside_the_key_layout(sb, cli, made_keys):
    """Issue 22.2: a backup naming ../../root/.ssh/authorized_keys2 is bad input, refused before connecting."""
    give_keys(sb, "snix", made_keys)
    back_up(cli, sb, "snix")
    store = SopsStore(sb.flake_dir / "secrets")
    evil = "../../root/.ssh/authorized_keys2"
    manifest = json.loads(store.read("secureboot/snix.yaml")["secureboot/manifest"].reveal_bytes())
    payload = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIattacker attacker\n"
    manifest["files"][evil] = {
        "mode": "0600",
        "owner": "root",
        "group": "root",
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    from infratool.secrets.secret import Secret

    store.write(
        "secureboot/snix.yaml",
        {
            "secureboot/manifest": json.dumps(manifest),
            f"secureboot/files/{evil}": Secret(base64.b64encode(payload).decode()),
        },
    )
    shutil.rmtree(sb.host("snix").path(KEYDIR))
    target = sb.host("snix").path("/root/.ssh/authorized_keys2")
    result = cli("-i", sb.inventory_path, "secureboot", "restore", "snix", "--yes")
    assert result.returncode == 3, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert f"secureboot/files/{evil}: not a file of an sbctl key bundle" in out
    assert "secrets/secureboot/snix.yaml" in out
    assert "connecting" not in out  # refused before any connection
    assert not target.exists() and not sb.host("snix").path(KEYDIR).exists()

    # A bundle directory outside the known list is refused the same way.
    manifest["files"].pop(evil)
    manifest["bundle"] = "/root/.ssh"
    store.invalidate()
    store.write(
        "secureboot/snix.yaml",
        {"secureboot/manifest": json.dumps(manifest), f"secureboot/files/{evil}": None},
    )
    result = cli("-i", sb.inventory_path, "run", PLAYBOOK, "--yes", "--limit", "snix")
    assert "bundle '/root/.ssh' is not an sbctl key directory" in result.stdout + result.stderr
    restore = cli("-i", sb.inventory_path, "secureboot", "restore", "snix", "--yes")
    assert restore.returncode == 3 and "bundle '/root/.ssh'" in restore.stdout + restore.stderr


def test_restore_goes_where_the_hosts_sbctl_looks(sb, cli, made_keys):
    """A backup made from /etc/secureboot, restored on a host whose sbctl uses /var/lib/sbctl."""
    from infratool_lab.sbctl import NIXPKGS, UPSTREAM, etc_secureboot, install_on_lab_host

    inv = sb.inventory_path
    install_on_lab_host(sb, "brix", build=NIXPKGS)
    legacy = etc_secureboot(sb, "brix")
    shutil.copytree(made_keys, legacy, dirs_exist_ok=True, copy_function=shutil.copy2)
    back_up(cli, sb, "brix")
    manifest = SopsStore(sb.flake_dir / "secrets").read("secureboot/brix.yaml")["secureboot/manifest"]
    assert json.loads(manifest.reveal_bytes())["bundle"] == "/etc/secureboot"
    # Reinstalled without /etc/secureboot, with upstream's sbctl: it looks in /var/lib/sbctl.
    shutil.rmtree(legacy)
    install_on_lab_host(sb, "brix", build=UPSTREAM)
    restored = ok(cli("-i", inv, "secureboot", "restore", "brix", "--yes"))
    assert "~ backed up from /etc/secureboot; restored into /var/lib/sbctl" in restored.stdout
    keys = sb.host("brix").path(KEYDIR)
    assert digests(keys, keys_only=True) == digests(made_keys, keys_only=True)
    assert status_json(sb, "brix")["installed"] is True
    assert not legacy.exists()
