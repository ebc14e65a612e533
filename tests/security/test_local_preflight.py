"""Issues 13.6 and 13.7: local mistakes are found once, before any change, with exit 3.

Real CLI processes against the lab. A missing ``ssh_key`` and a malformed pin
are refused before any connection (the hosts' sshd logs do not change); no
usable age identity is found once (not "4 host(s) failed") before any sops
file is created or host changed; a policy with an owner like ``$(...)`` is
refused before a pending value is stored.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers import PLAYBOOKS

BASELINE = PLAYBOOKS / "baseline.yaml"


def sshd_logs(lab) -> dict[str, str]:
    return {h.name: h.sshd_log.read_text() for h in lab.hosts()}


def assert_not_contacted(lab, before: dict[str, str]) -> None:
    for h in lab.hosts():
        assert h.sshd_log.read_text() == before[h.name], f"{h.name} was contacted"


def test_missing_ssh_key_and_malformed_pin_are_exit_3_before_connecting(lab, cli, tmp_path):
    before = sshd_logs(lab)
    text = lab.inventory_path.read_text()
    missing = tmp_path / "no-such-key"
    no_key = tmp_path / "no-key.yaml"
    no_key.write_text(re.sub(r"ssh_key: [^,}]+", f"ssh_key: {missing}", text, count=1))
    bad_pin = tmp_path / "bad-pin.yaml"
    bad_pin.write_text(
        re.sub(r'host_key: "ssh-ed25519 [^"]+"', 'host_key: "ssh-ed25519 AAAA!!not-base64"', text, count=1)
    )
    for inv, message in (
        (no_key, f"ssh_key {missing} does not exist"),
        (bad_pin, "malformed pinned host key"),
    ):
        for command in (["run", BASELINE, "--yes"], ["plan", BASELINE], ["hosts", "--check"], ["facts"]):
            r = cli("-i", inv, *command)
            assert r.returncode == 3, (command, r.returncode, r.stderr)
            assert message in r.stderr and f"{inv}:" in r.stderr, r.stderr
            assert r.stderr.count("error:") == 1, r.stderr
    assert_not_contacted(lab, before)


def test_no_usable_age_identity_is_one_exit_3_before_any_change(fleet, cli, tmp_path):
    lab = fleet
    secrets = lab.flake_dir / "secrets"
    before = sorted(p.name for p in secrets.iterdir())
    stranger = tmp_path / "stranger.txt"  # a valid age identity that no rule lists
    from infratool.onboard.scaffold import new_age_key

    new_age_key(stranger)
    stranger.chmod(0o644)
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    cases = {
        "wrong key": {"SOPS_AGE_KEY_FILE": str(stranger)},
        "no key": {"SOPS_AGE_KEY_FILE": "", "HOME": str(empty_home), "XDG_CONFIG_HOME": str(empty_home)},
    }
    for case, env in cases.items():
        r = cli("-i", lab.inventory_path, "run", PLAYBOOKS / "remote-builders.yaml", "--yes", env=env)
        out = r.stdout + r.stderr
        assert r.returncode == 3, (case, r.returncode, out)
        assert "none of your age identities is a recipient" in out and ".sops.yaml:" in out, (case, out)
        assert out.count("error:") == 1 and "host(s) failed" not in out, (case, out)
        if case == "wrong key":
            assert f"age key file {stranger} is mode 0644: others can read it" in r.stderr
    # Nothing was created in the repo, nothing changed on a host.
    assert sorted(p.name for p in secrets.iterdir()) == before
    assert not lab.host("slax").path("/etc/nix/machines").exists()
    assert not any(Path(lab.host("snix").path("/root/.ssh")).glob("authorized_keys*")) or (
        "nix-daemon" not in lab.host("snix").path("/root/.ssh/authorized_keys").read_text()
    )


def test_hostile_policy_owner_is_refused_before_a_pending_value_is_stored(fleet, cli):
    lab = fleet
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    policy.write_text(
        "secrets:\n"
        "  app/token:\n"
        "    file: secrets/app.yaml\n"
        "    generator: hex\n"
        "    consumers:\n"
        "      - host: brix\n"
        '        file: {path: /var/lib/app/token, owner: "$(touch /tmp/pwned)"}\n'
        "  _rotation/pending/app/token:\n"
        "    file: secrets/app.yaml\n"
        "    generator: hex\n"
    )
    before = sshd_logs(lab)
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--yes")
    assert r.returncode == 3, r.stderr
    assert f"{policy}:7:" in r.stderr and "not a user/group name" in r.stderr
    assert not (lab.flake_dir / "secrets" / "app.yaml").exists()
    policy.write_text(policy.read_text().replace('owner: "$(touch /tmp/pwned)"', "owner: root"))
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--yes")
    assert r.returncode == 3 and f"{policy}:8:" in r.stderr and "is reserved" in r.stderr, r.stderr
    assert not (lab.flake_dir / "secrets" / "app.yaml").exists()
    assert_not_contacted(lab, before)


def test_a_planted_lock_symlink_is_refused_before_connecting(fleet, cli, tmp_path):
    """Issue 13.8, end to end: a committed `.app.yaml.lock -> victim` is exit 3; the victim keeps its bytes."""
    lab = fleet
    secrets = lab.flake_dir / "secrets"
    (secrets / "rotation.yaml").write_text(
        "secrets:\n  app/token:\n    file: secrets/app.yaml\n    generator: hex\n"
        "    consumers:\n      - host: brix\n        file: {path: /var/lib/app/token}\n"
    )
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    before = sshd_logs(lab)
    for lock in (secrets / ".app.yaml.lock", secrets / ".rotation-state.yaml.lock"):
        lock.symlink_to(victim)
        r = cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--yes")
        assert r.returncode == 3 and f"lock file {lock} is a symlink" in r.stderr, r.stderr
        lock.unlink()
    assert victim.read_text() == "root's file\n"
    assert not (secrets / "app.yaml").exists()
    assert_not_contacted(lab, before)
