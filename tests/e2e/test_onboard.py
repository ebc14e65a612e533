"""Onboarding against the real lab: `init` in an empty directory, `host add` / `host remove`.

Everything runs through the real CLI (a subprocess), real sshd hosts, the real
sops binary. Age recipients are checked against vectors computed
independently of infratool (libsodium's Ed25519→X25519 conversion through
PyNaCl, bech32 from the `bech32` package), and re-encrypted files are
decrypted with the lab host's own SSH host key converted to an age identity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import openssh_fingerprint, ssh_to_age

from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore

SOPS = str(Path(sys.executable).parent / "sops")


# --- independent references -----------------------------------------------------------


def new_public_key() -> str:
    """A fresh ``ssh-ed25519 AAAA...`` public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def host_identity(lab, name: str) -> Secret:
    """The lab host's sshd key as an age identity (what sops-nix on the host decrypts with)."""
    from infratool.secrets.agekeys import ssh_ed25519_private_to_age_identity

    return ssh_ed25519_private_to_age_identity(
        lab.host(name).path("/etc/ssh/ssh_host_ed25519_key").read_bytes()
    )


def decrypt_as(identity: Secret, file: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """sops decrypt with ONLY ``identity`` available (its own 0600 key file, an empty HOME)."""
    key_file = home / "identity.txt"
    key_file.touch(mode=0o600)
    key_file.write_text(identity.reveal() + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    return subprocess.run(
        [SOPS, "--disable-version-check", "decrypt", str(file)],
        env={**env, "SOPS_AGE_KEY_FILE": str(key_file)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def lab(lab_factory):
    """A two-host lab (snix, slax): enough for every test here, and quicker to boot than four."""
    return lab_factory(2)


@pytest.fixture
def onboard_repo(lab, cli, tmp_path, monkeypatch):
    """`infratool init fleet` in an empty directory, logging in with the lab's admin key."""
    key = tmp_path / "operator" / "keys.txt"
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    result = cli("init", "fleet", "--ssh-key", lab.admin_key, "--os", "linux")
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp_path / "fleet"


def add(cli, onboard_repo: Path, lab, name: str, *extra: str, input: str | None = None):
    """`infratool -i fleet/hosts.yaml host add NAME --address <lab address> ...`."""
    return cli(
        "-i",
        onboard_repo / "hosts.yaml",
        "host",
        "add",
        name,
        "--address",
        lab.host(name).address,
        *extra,
        input=input,
    )


# --- init ------------------------------------------------------------------------------------


def test_init_scaffolds_and_keeps_the_key_private(cli, tmp_path, monkeypatch):
    key = tmp_path / "operator" / "keys.txt"
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    result = cli("init", "fleet", "--ssh-key", "~/.ssh/id_admin")
    assert result.returncode == 0, result.stderr
    fleet = tmp_path / "fleet"
    for rel in (
        "hosts.yaml",
        "playbooks/site.yaml",
        "playbooks/baseline.yaml",
        "README.md",
        "secrets/.sops.yaml",
    ):
        assert (fleet / rel).is_file(), rel
    assert key.stat().st_mode & 0o777 == 0o600
    private = next(ln for ln in key.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-"))
    recipient = next(ln.split(": ")[1] for ln in key.read_text().splitlines() if "public key" in ln)
    assert private not in result.stdout + result.stderr
    assert str(key) in result.stdout and recipient in result.stdout
    sops_rules = yaml.safe_load((fleet / "secrets/.sops.yaml").read_text())["creation_rules"]
    assert recipient in sops_rules[-1]["age"]
    # hosts.yaml is commented and valid YAML with an empty host list, ready for `host add`.
    hosts_text = (fleet / "hosts.yaml").read_text()
    assert hosts_text.count("#") > 5 and yaml.safe_load(hosts_text)["hosts"] is None
    assert private not in "".join(p.read_text() for p in fleet.rglob("*") if p.is_file())

    # A second init refuses and changes nothing; the key is reused, never replaced.
    before, key_before = snapshot(fleet), key.read_bytes()
    again = cli("init", "fleet")
    assert again.returncode == 3
    assert "refusing to overwrite" in again.stderr and "hosts.yaml" in again.stderr
    assert snapshot(fleet) == before and key.read_bytes() == key_before
    other = cli("init", "other")
    assert other.returncode == 0 and "existing key reused" in other.stdout
    assert key.read_bytes() == key_before


# --- host add: explicit trust on first use ---------------------------------------------------------


def test_init_then_host_add_gives_a_working_inventory(lab, cli, onboard_repo):
    snix, slax = lab.host("snix"), lab.host("slax")
    log_before = snix.sshd_log.read_text()
    confirmed = add(cli, onboard_repo, lab, "snix", "--tags", "builder,cache", input="yes\n")
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    fp = openssh_fingerprint(snix.host_key_public)
    assert fp in confirmed.stderr and "Pin this key for snix?" in confirmed.stderr
    # Fetching the key is a key exchange only: no login, no command on the host.
    new_log = snix.sshd_log.read_text()[len(log_before) :]
    assert "Accepted publickey" not in new_log and "Starting session" not in new_log

    unattended = add(
        cli, onboard_repo, lab, "slax", "--fingerprint", openssh_fingerprint(slax.host_key_public)
    )
    assert unattended.returncode == 0, unattended.stdout + unattended.stderr
    assert "Pin this key" not in unattended.stderr

    hosts = yaml.safe_load((onboard_repo / "hosts.yaml").read_text())["hosts"]
    assert list(hosts) == ["snix", "slax"]
    assert hosts["snix"]["host_key"] == snix.host_key_public
    assert hosts["snix"]["tags"] == ["builder", "cache"]
    assert hosts["slax"] == {"address": slax.address, "host_key": slax.host_key_public}

    inv = onboard_repo / "hosts.yaml"
    checked = cli("-i", inv, "hosts", "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    plan = cli("-i", inv, "plan", onboard_repo / "playbooks/site.yaml", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "Plan: 4 change(s) on 2 of 2 target(s)" in plan.stdout
    run = cli("-i", inv, "run", onboard_repo / "playbooks/site.yaml", "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert slax.path("/var/lib/infratool/managed-by").is_file()
    again = cli("-i", inv, "plan", onboard_repo / "playbooks/site.yaml", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout


def test_unconfirmed_or_wrong_key_writes_nothing(lab, cli, onboard_repo, tmp_path):
    secrets = SopsStore(onboard_repo / "secrets")
    secrets.write("slax.yaml", {"db/password": Secret("s3cret")})
    before, operator_key = snapshot(onboard_repo), (tmp_path / "operator" / "keys.txt").read_bytes()
    someone_else = lab.host("snix").host_key_public
    cases = [
        (("--fingerprint", "SHA256:" + "A" * 43), None, "not the expected SHA256:AAAA"),
        (("--fingerprint", openssh_fingerprint(someone_else)), None, "not the expected"),
        (("--host-key", someone_else), None, "not the expected"),
        ((), "no\n", "not confirmed"),
        ((), "", "not confirmed"),  # EOF on stdin is not a yes
    ]
    for args, answer, message in cases:
        result = add(cli, onboard_repo, lab, "slax", *args, input=answer)
        assert result.returncode == 4, (args, result.stdout + result.stderr)
        assert message in result.stderr and "nothing written" in result.stderr, args
        assert snapshot(onboard_repo) == before, args
    assert (tmp_path / "operator" / "keys.txt").read_bytes() == operator_key


def test_age_recipient_matches_ssh_to_age(lab, cli, onboard_repo):
    for name in ("snix", "slax"):
        out = cli(
            "--json",
            "-i",
            onboard_repo / "hosts.yaml",
            "host",
            "add",
            name,
            "--address",
            lab.host(name).address,
            "--fingerprint",
            openssh_fingerprint(lab.host(name).host_key_public),
        )
        assert out.returncode == 0, out.stderr
        reported = json.loads(out.stdout)
        expected = ssh_to_age(lab.host(name).host_key_public)
        assert reported["age_recipient"] == expected
        rules = yaml.safe_load((onboard_repo / "secrets/.sops.yaml").read_text())["creation_rules"]
        own = next(r for r in rules if f"){name}(" in r["path_regex"])
        assert own["age"][-1] == expected


def test_reencrypted_files_decrypt_with_the_host_key(lab, cli, onboard_repo, tmp_path):
    store = SopsStore(onboard_repo / "secrets")
    store.write("slax.yaml", {"db/password": Secret("slax-only")})
    store.write("common.yaml", {"wifi/psk": Secret("everyone")})
    store.write("snix.yaml", {"cache/key": Secret("snix-only")})
    store.write("operators.yaml", {"root/password": Secret("operators-only")})
    home = tmp_path / "empty-home"
    home.mkdir()
    slax = host_identity(lab, "slax")
    # Before: slax reads nothing.
    assert decrypt_as(slax, onboard_repo / "secrets/slax.yaml", home).returncode != 0

    added = add(cli, onboard_repo, lab, "slax", input="y\n")
    assert added.returncode == 0, added.stdout + added.stderr
    assert "re-encrypted fleet/secrets/slax.yaml" in added.stdout
    assert "slax-only" in decrypt_as(slax, onboard_repo / "secrets/slax.yaml", home).stdout
    assert "everyone" in decrypt_as(slax, onboard_repo / "secrets/common.yaml", home).stdout
    for other in ("snix.yaml", "operators.yaml"):
        refused = decrypt_as(slax, onboard_repo / "secrets" / other, home)
        assert refused.returncode != 0, other

    # The operator still reads everything.
    store.invalidate()
    assert store.read("slax.yaml")["db/password"].reveal() == "slax-only"

    removed = cli("-i", onboard_repo / "hosts.yaml", "host", "remove", "slax", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "rotate" in removed.stdout
    for gone in ("slax.yaml", "common.yaml"):
        assert decrypt_as(slax, onboard_repo / "secrets" / gone, home).returncode != 0, gone
    assert yaml.safe_load((onboard_repo / "hosts.yaml").read_text())["hosts"] is None
    assert "slax" not in (onboard_repo / "secrets/.sops.yaml").read_text()
    store.invalidate()
    assert store.read("common.yaml")["wifi/psk"].reveal() == "everyone"


def test_missing_operator_key_writes_nothing(lab, cli, onboard_repo, tmp_path):
    SopsStore(onboard_repo / "secrets").write("slax.yaml", {"token": Secret("t0ken")})
    before = snapshot(onboard_repo)
    nobody = tmp_path / "nobody"
    env = {
        "SOPS_AGE_KEY_FILE": str(nobody / "missing.txt"),
        "HOME": str(nobody),
        "XDG_CONFIG_HOME": str(nobody),
    }
    result = cli(
        "-i",
        onboard_repo / "hosts.yaml",
        "host",
        "add",
        "slax",
        "--address",
        lab.host("slax").address,
        "--fingerprint",
        openssh_fingerprint(lab.host("slax").host_key_public),
        env=env,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "cannot decrypt" in result.stderr
    assert snapshot(onboard_repo) == before


def test_comments_survive_add_and_remove(lab, cli, onboard_repo):
    inv = onboard_repo / "hosts.yaml"
    original = inv.read_text()
    assert add(cli, onboard_repo, lab, "snix", input="yes\n").returncode == 0
    # The operator annotates by hand between runs.
    text = inv.read_text().replace(
        "  snix:\n", "  # snix: the workstation, also the builder\n  snix:  # in the study\n"
    )
    text += "# end of hosts: keep me\n"
    inv.write_text(text)
    assert add(cli, onboard_repo, lab, "slax", input="yes\n").returncode == 0
    # A host not installed yet, whose host key was generated for its installer.
    third = cli(
        "-i",
        inv,
        "host",
        "add",
        "brix",
        "--address",
        "192.0.2.7",
        "--offline",
        "--host-key",
        new_public_key(),
    )
    assert third.returncode == 0, third.stderr
    after_adds = inv.read_text()
    for line in text.splitlines():
        assert line in after_adds.splitlines(), line
    assert cli("-i", inv, "host", "remove", "slax", "--yes").returncode == 0
    assert cli("-i", inv, "host", "remove", "snix", "--yes").returncode == 0
    final = inv.read_text()
    assert "snix:  # in the study" not in final  # the entry's own line went with it
    for line in (
        *original.splitlines(),
        "  # snix: the workstation, also the builder",
        "# end of hosts: keep me",
    ):
        assert line in final.splitlines(), line
    assert list(yaml.safe_load(final)["hosts"]) == ["brix"]
    assert cli("-i", inv, "host", "remove", "brix", "--yes").returncode == 0
    assert yaml.safe_load(inv.read_text())["hosts"] is None


def test_changed_host_key_needs_replace(lab, cli, onboard_repo, tmp_path):
    assert add(cli, onboard_repo, lab, "snix", "--tags", "builder", input="yes\n").returncode == 0
    old_recipient = ssh_to_age(lab.host("snix").host_key_public)
    SopsStore(onboard_repo / "secrets").write("snix.yaml", {"k": Secret("v")})
    new_key = lab.regenerate_host_key("snix")
    before = snapshot(onboard_repo)
    refused = add(cli, onboard_repo, lab, "snix", input="yes\n")
    assert refused.returncode == 4 and "--replace" in refused.stderr
    assert snapshot(onboard_repo) == before

    replaced = add(cli, onboard_repo, lab, "snix", "--replace", "--fingerprint", openssh_fingerprint(new_key))
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    entry = yaml.safe_load((onboard_repo / "hosts.yaml").read_text())["hosts"]["snix"]
    assert entry["host_key"] == new_key and entry["tags"] == ["builder"]  # other settings kept
    config = (onboard_repo / "secrets/.sops.yaml").read_text()
    assert old_recipient not in config and ssh_to_age(new_key) in config
    home = tmp_path / "h"
    home.mkdir()
    assert decrypt_as(host_identity(lab, "snix"), onboard_repo / "secrets/snix.yaml", home).returncode == 0
    assert cli("-i", onboard_repo / "hosts.yaml", "hosts", "--check").returncode == 0
