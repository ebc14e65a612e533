"""kill -9 of the controller in the middle of multi-step operations, then a rerun.

``INFRATOOL_FAULT=after-change-N`` (see ``infratool/faults.py``) makes the
controller SIGKILL itself after the N-th change it applied, so each operation
is cut at several of its steps without the task declaring fault points. The
rotation's own steps are covered in tests/e2e/test_secrets_rotation.py and the
cache key rotation's phases in tests/e2e/test_binary_cache.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import yaml
from helpers import PLAYBOOKS, digests
from infratool_lab.sbctl import provision_lab

from infratool.secrets.store import SopsStore
from infratool.tasks.remote_builders.spec import DEFAULT_USER

BUILDERS = PLAYBOOKS / "remote-builders.yaml"
CLIENTS = ("slax", "brix", "nixtv-player")


def _rotating_playbook(tmp_path):
    data = yaml.safe_load(BUILDERS.read_text())
    # rotate_keys rotates keys older than max_age: every key is, a second after the setup run.
    data["tasks"][0]["with"].update(rotate_keys=True, max_age="1s")
    path = tmp_path / "rotate-builder-keys.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _installed_keys(lab) -> dict[str, str]:
    return {c: lab.host(c).path("/etc/nix/remote-builders/id_ed25519").read_text() for c in CLIENTS}


# The rotation's changes, in order (the test asserts the plan still has this shape):
# 1 begin (the three new keys stored as pending, one sops write), 2 authorise them
# on snix, 3 its mark, 4-6 install them on the clients, 7 its mark, 8 revoke the old
# keys on snix, 9 its mark, 10 promote (one sops write), 11 finish. Cut after every
# one but the last.
ROTATION_CHANGES = 11


def _login_to_snix(lab, tmp_path, private: str) -> subprocess.CompletedProcess[str]:
    """Log in to snix's real sshd as the builder user with ``private`` (publickey only)."""
    key = tmp_path / "try-key"
    key.write_text(private)
    key.chmod(0o600)
    try:
        return subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={lab.known_hosts_path}", "-o", "ConnectTimeout=20",
             f"{DEFAULT_USER}@{lab.host('snix').address}", "nix-daemon", "--version"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        key.unlink()


def _refused(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode == 255 and "Permission denied (publickey)" in r.stderr


@pytest.mark.parametrize("after", range(1, ROTATION_CHANGES))
def test_builder_key_rotation_killed_after_any_change_converges_and_old_keys_are_refused(
    fleet, cli, tmp_path, after
):
    lab = fleet
    inv = lab.inventory_path
    assert cli("-i", inv, "run", BUILDERS, "--yes").returncode == 0
    before = _installed_keys(lab)
    rotate = _rotating_playbook(tmp_path)
    time.sleep(1.1)  # the keys just made become older than max_age (1s)
    planned = json.loads(cli("-i", inv, "--json", "plan", rotate).stdout)["changes"]
    assert len(planned) == ROTATION_CHANGES, [c["description"] for c in planned]

    killed = cli("-i", inv, "run", rotate, "--yes", env={"INFRATOOL_FAULT": f"after-change-{after}"})
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]

    # The rerun of the ordinary playbook finishes the job: whatever keys sops holds
    # are installed, the builder trusts exactly them, old ones are revoked.
    rerun = cli("-i", inv, "run", BUILDERS, "--yes")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    again = cli("-i", inv, "plan", BUILDERS, "--detailed-exitcode")
    assert again.returncode == 0, again.stdout[-2000:]
    stored = SopsStore(lab.flake_dir / "secrets").read("remote-builders.yaml")
    installed = _installed_keys(lab)
    for client in CLIENTS:
        assert installed[client] == str(stored[f"remote-builders/{client}/ssh_key"].reveal())
    assert all(installed[c] != before[c] for c in CLIENTS)  # the pending new keys won
    replaced = [c for c in CLIENTS if installed[c] != before[c]]
    assert replaced, "the cut left no key rotated: nothing to prove"
    for client in replaced:
        # The real sshd on the builder: the client's old key gets no login at all,
        # while its new key (same user, same way in) does.
        assert _refused(_login_to_snix(lab, tmp_path, before[client])), f"{client}'s old key still logs in"
        assert not _refused(_login_to_snix(lab, tmp_path, installed[client])), (
            f"{client}'s new key is refused"
        )
    check = tmp_path / "check.yaml"
    check.write_text(
        "tasks:\n  - task: remote_builders.check\n"
        "    with: {builders: [snix], clients: [slax, brix, nixtv-player]}\n"
    )
    verified = cli("-i", inv, "run", check, "--yes")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-2000:]


def test_secure_boot_restore_killed_then_rerun_converges(fleet, cli):
    """Restore is one change (all key files in one atomic batch, each file temp+rename):
    killed right after it, the rerun finds nothing to do; a transfer cut mid-way is
    test_engine.py::test_a_cut_transfer_never_replaces_a_file."""
    lab = fleet
    after = 1
    inv = lab.inventory_path
    provision_lab(lab, hosts=["slax"])
    assert cli("-i", inv, "run", PLAYBOOKS / "secureboot.yaml", "--yes", "--limit", "slax").returncode == 0
    keydir = lab.host("slax").path("/var/lib/sbctl")
    want = digests(keydir, keys_only=True)
    shutil.rmtree(keydir / "keys")

    killed = cli(
        "-i", inv, "secureboot", "restore", "slax", "--yes", env={"INFRATOOL_FAULT": f"after-change-{after}"}
    )
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert "1 change" in killed.stdout, killed.stdout[-2000:]  # after-change-1 is after every change
    done = cli("-i", inv, "secureboot", "restore", "slax", "--yes")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no changes" in done.stdout, done.stdout[-2000:]  # the killed run had finished: nothing to do
    got = digests(keydir, keys_only=True)
    assert got == want
    assert not list(keydir.rglob(".infratool.*"))
