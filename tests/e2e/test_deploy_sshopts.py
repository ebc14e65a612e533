"""Issue 13.15: every place that hands a host to Nix gets the inventory's port, key and pin.

A deploy (``nixos-rebuild --target-host``, ``nix copy``) runs the system ssh
through ``NIX_SSHOPTS``. The lab's slax listens on 2222 and its key is pinned
only in the inventory: the deploy command here is a plain
``ssh $NIX_SSHOPTS user@address``, exactly what nixos-rebuild and Nix run, so
it reaches slax only with the options infratool built.
"""

from __future__ import annotations

import yaml
from conftest import PLAYBOOKS

from infratool.inventory import Host
from infratool.nixssh import known_hosts_lines, sshopts


def test_a_deploy_reaches_a_host_on_2222_through_the_pinned_key_only(fleet, cli, tmp_path):
    lab = fleet
    lab.set_port("slax", 2222)
    data = yaml.safe_load(lab.inventory_path.read_text())
    data["hosts"]["slax"]["os"] = "nixos"
    proof = tmp_path / "deployed"
    data["hosts"]["slax"]["deploy_command"] = (
        f"sh -c 'ssh $NIX_SSHOPTS {{user}}@{{address}} hostname > {proof}'"
    )
    inv = tmp_path / "hosts.yaml"
    inv.write_text(yaml.safe_dump(data))
    # No ~/.ssh/known_hosts to fall back on: the controller's HOME is empty.
    home = tmp_path / "home"
    home.mkdir()
    run = cli("-i", inv, "run", PLAYBOOKS / "remote-builders.yaml", "--yes", env={"HOME": str(home)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "deploy slax:" in run.stdout
    assert proof.read_text() == "slax\n"
    assert not (home / ".ssh").exists()  # nothing learned on first use


def test_sshopts_pin_the_inventory_key_under_openssh_names(tmp_path):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    on_2222 = Host("a", "10.0.0.1", port=2222, host_keys=(key,), ssh_key=tmp_path / "id")
    assert known_hosts_lines(on_2222) == f"[10.0.0.1]:2222 {key}\n"
    assert known_hosts_lines(Host("b", "10.0.0.2", host_keys=(key,))) == f"10.0.0.2 {key}\n"
    opts = sshopts(on_2222, tmp_path / "kh").split()
    assert opts[:2] == ["-p", "2222"] and "StrictHostKeyChecking=yes" in opts
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in opts and "GlobalKnownHostsFile=/dev/null" in opts
    assert opts[opts.index("-i") + 1] == str(tmp_path / "id")
