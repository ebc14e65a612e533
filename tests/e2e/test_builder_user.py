"""Issue 22.1: the builder login user is created from scratch, unprivileged, and only it is trusted.

Lab hosts share the controller's /etc/passwd, so the test uses a user name of
its own (removed afterwards) to see the task create it where none existed.
"""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest
import yaml
from conftest import PLAYBOOKS


@pytest.fixture
def fresh_user() -> str:
    name = f"nixrb{os.urandom(3).hex()}"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    yield name
    subprocess.run(["userdel", name], capture_output=True, check=False)


def test_the_login_user_is_created_unprivileged_and_builds_work(fleet, cli, tmp_path, fresh_user):
    lab, inv = fleet, fleet.inventory_path
    data = yaml.safe_load((PLAYBOOKS / "remote-builders.yaml").read_text())
    data["tasks"][0]["with"]["ssh_user"] = fresh_user
    pb = tmp_path / "rb.yaml"
    pb.write_text(yaml.safe_dump(data))
    plan = cli("-i", inv, "plan", pb)
    assert f"create the builder login user {fresh_user}" in plan.stdout, plan.stdout + plan.stderr
    run = cli("-i", inv, "run", pb, "--yes")  # verify: ping and a build as that user
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert cli("-i", inv, "plan", pb, "--detailed-exitcode").returncode == 0

    entry = pwd.getpwnam(fresh_user)
    assert entry.pw_uid != 0 and entry.pw_uid < 1000  # a system user
    assert entry.pw_dir == f"/var/lib/{fresh_user}"
    snix = lab.host("snix")
    ssh_dir = snix.path(f"/var/lib/{fresh_user}/.ssh")
    assert ssh_dir.stat().st_uid == entry.pw_uid and ssh_dir.stat().st_mode & 0o777 == 0o700
    keys = ssh_dir / "authorized_keys"
    assert keys.stat().st_uid == entry.pw_uid and keys.stat().st_mode & 0o777 == 0o600
    assert f"trusted-users = root {fresh_user}" in snix.path("/etc/nix/nix.conf").read_text()
    groups = subprocess.run(
        ["id", "-Gn", fresh_user], capture_output=True, text=True, check=True
    ).stdout.split()
    assert groups == [fresh_user]  # nothing else: no sudo, no wheel
