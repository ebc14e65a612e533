"""The deploy engine's pieces that need no host: its scripts, its plan, its ssh options."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from infratool.changes import LOCAL, Change
from infratool.deploy import hostside
from infratool.deploy.build import host_from_args, host_to_args
from infratool.deploy.engine import OP, Activation
from infratool.deploy.plan import COMMAND_OP, clear_pending, deploy_changes, mark_pending, pending
from infratool.inventory import Host, Inventory
from infratool.nixssh import nix_ssh_config, ssh_alias

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _scripts() -> dict[str, str]:
    return {
        "watchdog": hostside.WATCHDOG,
        "start": hostside.start_script("/nix/store/abc-nixos-system-x", 30),
        "confirm": hostside.confirm_script(10),
        "abort": hostside.abort_script("verify failed: it's 'quoted' \"twice\"", 10),
        "status": hostside.status_script(),
    }


@pytest.mark.parametrize("name", sorted(_scripts()))
def test_host_scripts_are_posix_sh_without_python(name):
    script = _scripts()[name]
    # dash is Debian's /bin/sh: no bashisms get past it.
    checked = subprocess.run(["dash", "-n"], input=script.encode(), capture_output=True, check=False)
    assert checked.returncode == 0, checked.stderr.decode()
    assert "python" not in script


def test_the_watchdog_is_carried_verbatim_in_the_start_script():
    assert hostside.WATCHDOG in hostside.start_script("/nix/store/abc-x", 30)


def test_activation_status_lines_parse():
    assert Activation.parse("rolled-back not confirmed within 30s\n") == Activation(
        "rolled-back", "not confirmed within 30s"
    )
    assert Activation.parse("activated").final is False
    assert Activation.parse("committed /nix/store/x is the boot default").final is True
    assert Activation.parse("").word == "none"


def _inventory(tmp_path: Path, **extra) -> Inventory:
    hosts = {
        "snix": Host("snix", "10.0.0.1", os="nixos", host_keys=(KEY,), flake=tmp_path, **extra),
        "slax": Host("slax", "10.0.0.2", port=2222, os="nixos", host_keys=(KEY,), flake=tmp_path),
        "deb": Host("deb", "10.0.0.3", os="linux", host_keys=(KEY,), flake=tmp_path),
    }
    return Inventory(tmp_path / "hosts.yaml", hosts)


def _file_change(host: str) -> Change:
    return Change(
        LOCAL,
        "nix.settings",
        "create x",
        op="local.write",
        args={"rel": f"hosts/{host}/generated/a.nix"},
        deploy=host,
    )


def test_one_deploy_change_per_changed_nixos_host_on_that_host_with_plain_data_args(tmp_path):
    inv = _inventory(tmp_path)
    changes = deploy_changes([_file_change("slax")], inv, targets={"snix", "slax", "deb"}, stage=3)
    assert [(c.host, c.op, c.stage, c.action) for c in changes] == [("slax", OP, 3, "deploy")]
    change = changes[0]
    assert "hosts/slax/generated/a.nix" in change.description and change.deploy == "slax"
    json.dumps(change.args)  # plain data: a plan file can store it
    assert change.args["batch"]["hosts"] == ["slax"] and change.args["confirm_timeout"] == 30


def test_an_unreachable_or_untargeted_host_is_not_deployed(tmp_path):
    inv = _inventory(tmp_path)
    assert deploy_changes([_file_change("slax")], inv, targets={"snix"}, stage=0) == []


def test_a_pending_host_is_deployed_without_a_file_change_until_cleared(tmp_path):
    inv = _inventory(tmp_path)
    mark_pending(tmp_path, {"snix"})
    assert pending(tmp_path) == {"snix"}
    changes = deploy_changes([], inv, targets={"snix", "slax"}, stage=0)
    assert [c.host for c in changes] == ["snix"] and "pending" in changes[0].description
    clear_pending(tmp_path, "snix")
    assert deploy_changes([], inv, targets={"snix", "slax"}, stage=0) == []


def test_deploy_command_is_the_escape_hatch_run_locally(tmp_path):
    inv = _inventory(tmp_path, deploy_command="nixos-rebuild switch --flake {flake}#{host}")
    changes = deploy_changes([_file_change("snix")], inv, targets={"snix"}, stage=0)
    assert [(c.host, c.op) for c in changes] == [(LOCAL, COMMAND_OP)]
    assert changes[0].args["argv"][:2] == ["nixos-rebuild", "switch"]


def test_build_on_is_carried_as_data_and_comes_back_as_the_same_host(tmp_path):
    inv = _inventory(tmp_path)
    change = deploy_changes([_file_change("slax")], inv, targets={"slax"}, stage=0, build_on="snix")[0]
    back = host_from_args(json.loads(json.dumps(change.args["build_on"])))
    assert (back.name, back.address, back.port, back.host_keys) == ("snix", "10.0.0.1", 22, (KEY,))
    assert host_to_args(back) == change.args["build_on"]


def test_nix_ssh_config_pins_each_host_on_its_port_and_nothing_else(tmp_path):
    a = Host("a", "10.0.0.1", port=2222, host_keys=(KEY,), ssh_key=tmp_path / "id")
    b = Host("b", "10.0.0.2", host_keys=(KEY,))
    with nix_ssh_config(a, b) as env:
        opts = env["NIX_SSHOPTS"].split()
        assert opts[0] == "-F"
        config = Path(opts[1]).read_text()
        block_a = config.split(f"Host {ssh_alias(b)}")[0]
        assert (
            f"Host {ssh_alias(a)}" in block_a
            and "Port 2222" in block_a
            and f"IdentityFile {tmp_path / 'id'}" in block_a
        )
        assert (
            config.count("StrictHostKeyChecking yes") == 2
            and config.count("GlobalKnownHostsFile /dev/null") == 2
        )
        known = [line.split()[1] for line in config.splitlines() if "UserKnownHostsFile" in line]
        assert Path(known[0]).read_text() == f"[10.0.0.1]:2222 {KEY}\n"
        assert Path(known[1]).read_text() == f"10.0.0.2 {KEY}\n"
    assert not Path(opts[1]).exists()  # removed after the command
    with pytest.raises(Exception, match="no pinned host key"), nix_ssh_config(Host("c", "10.0.0.3")):
        pass


def test_a_batch_build_gives_each_host_its_own_system(tmp_path, monkeypatch):
    """Nix 2.8's `nix build --json` does not keep the installables' order: results are matched by drvPath.

    (Before the fix, hosts were zipped with the results in order and slax got nixtv-player's system.)
    """
    import shutil
    import sys

    if shutil.which("nix") is None:
        pytest.skip("no nix on this machine")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from nixos_standin import write_flake

    from infratool.deploy.build import build_many

    names = ["snix", "slax", "brix", "nixtv-player"]
    write_flake(tmp_path, names)
    for name in names:
        (tmp_path / "hosts" / name / "generated").mkdir(parents=True)
        (tmp_path / "hosts" / name / "generated" / "a.nix").write_text(f"{name} {os.urandom(4).hex()}\n")
    monkeypatch.setenv("NIX_CONFIG", "build-users-group =\nsandbox = false\nsubstituters =\n")
    built = build_many(tmp_path, names)
    assert sorted(built) == sorted(names)
    for name, path in built.items():
        assert path.endswith(f"-nixos-system-{name}"), (name, path)
