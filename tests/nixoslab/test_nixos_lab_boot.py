"""`lab up --nixos`: NixOS-shaped lab hosts with a real system profile, generations and activation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
import yaml
from infratool_lab import Lab
from infratool_lab import nixos as labnixos

PROFILE = labnixos.PROFILE


def current_system(lab: Lab, name: str) -> str:
    """What /run/current-system points at, read on the host."""
    return lab.exec(name, "readlink -f /run/current-system", check=True).stdout.decode().strip()


def generation(lab: Lab, name: str, configuration: str) -> str:
    """Build host ``name`` with ``configuration`` as its configuration.nix and copy it in; its store path."""
    conf = lab.flake_dir / "hosts" / name / "configuration.nix"
    conf.write_text(configuration)
    path = labnixos.build(lab.flake_dir, [name])[name]
    labnixos.copy_to_host(lab.host(name).root, path)
    return path


def boot_default(lab: Lab, name: str) -> str:
    """The generation the stand-in boot loader starts (``/var/lib/lab-boot/loader/loader.conf``)."""
    return lab.host(name).path(f"{labnixos.BOOT_DIR}/loader/loader.conf").read_text().split()[1]


@pytest.fixture
def nixos_lab(lab_factory: Callable[..., Lab]) -> Lab:
    """Two NixOS-shaped hosts (snix, slax)."""
    return lab_factory(2, nixos=True)


def test_nixos_hosts_boot_with_a_system_profile(nixos_lab: Lab) -> None:
    lab = nixos_lab
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    assert {h["os"] for h in inventory["hosts"].values()} == {"nixos"}
    flake = (lab.flake_dir / "flake.nix").read_text()
    assert '"snix" = host "snix"' in flake and '"slax" = host "slax"' in flake
    for name in ("snix", "slax"):
        host = lab.host(name)
        profile = host.path(PROFILE)
        assert os.readlink(profile) == "system-1-link"
        toplevel = os.readlink(host.path(f"{PROFILE}-1-link"))
        assert toplevel.startswith("/nix/store/") and toplevel.endswith(f"-nixos-system-{name}-lab")
        assert current_system(lab, name) == toplevel
        # The toplevel is in the host's own store (not the controller's).
        assert lab.exec(name, ["nix-store", "--verify-path", toplevel]).returncode == 0
        # /etc/nix/nix.conf is written by activation: a link into the generation.
        assert os.readlink(host.path("/etc/nix/nix.conf")) == f"{toplevel}/etc/nix/nix.conf"
        conf = lab.exec(name, "cat /etc/nix/nix.conf", check=True).stdout.decode()
        assert "sandbox = false" in conf and "build-users-group = \n" in conf
        assert boot_default(lab, name) == "nixos-generation-1.conf"


def test_nixos_host_answers_on_its_pinned_key(nixos_lab: Lab) -> None:
    # sshd of a NixOS-shaped host also reads /etc/ssh/authorized_keys.d/%u;
    # the admin key still logs in, and the pinned key is the one presented.
    lab = nixos_lab
    entry = yaml.safe_load(lab.inventory_path.read_text())["hosts"]["slax"]
    client = paramiko.SSHClient()
    kind, blob = entry["host_key"].split()[:2]
    client.get_host_keys().add(
        entry["address"], kind, paramiko.PKey.from_type_string(kind, __import__("base64").b64decode(blob))
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        entry["address"],
        username="root",
        key_filename=str(lab.admin_key),
        look_for_keys=False,
        allow_agent=False,
    )
    try:
        _, out, _ = client.exec_command("readlink /run/current-system")
        assert out.read().decode().strip().endswith("-nixos-system-slax-lab")
    finally:
        client.close()


def test_switch_test_then_boot_then_reboot(nixos_lab: Lab) -> None:
    lab = nixos_lab
    first = current_system(lab, "snix")
    second = generation(
        lab, "snix", '{ ... }: { networking.hostName = "snix"; nix.settings.max-jobs = 3; }\n'
    )
    assert second != first

    lab.exec("snix", labnixos.switch_script(second, "test"), check=True)
    host = lab.host("snix")
    # A second generation in the profile; running now, not yet the boot default.
    assert os.readlink(host.path(PROFILE)) == "system-2-link"
    assert os.readlink(host.path(f"{PROFILE}-2-link")) == second
    assert current_system(lab, "snix") == second
    assert "max-jobs = 3" in lab.exec("snix", "cat /etc/nix/nix.conf", check=True).stdout.decode()
    assert boot_default(lab, "snix") == "nixos-generation-1.conf"

    # A reboot starts the boot default: generation 1 again.
    lab.stop_host("snix")
    lab.start_host("snix")
    assert current_system(lab, "snix") == first
    assert "max-jobs = 3" not in lab.exec("snix", "cat /etc/nix/nix.conf", check=True).stdout.decode()

    # boot: generation 2 becomes the default without being activated.
    lab.exec("snix", f"{second}/bin/switch-to-configuration boot", check=True)
    assert boot_default(lab, "snix") == "nixos-generation-2.conf"
    assert current_system(lab, "snix") == first
    lab.stop_host("snix")
    lab.start_host("snix")
    assert current_system(lab, "snix") == second


def test_switch_to_configuration_rejects_unknown_actions(nixos_lab: Lab) -> None:
    top = current_system(nixos_lab, "slax")
    result = nixos_lab.exec("slax", f"{top}/bin/switch-to-configuration frobnicate")
    assert result.returncode == 1
    assert b"Usage:" in result.stderr
    dry = nixos_lab.exec("slax", f"{top}/bin/switch-to-configuration dry-activate", check=True)
    assert f"would activate {top}".encode() in dry.stdout


def test_lab_up_again_keeps_the_nixos_hosts_and_their_generations(nixos_lab: Lab) -> None:
    lab = nixos_lab
    before = current_system(lab, "slax")
    lab.up(2)  # no --nixos: the hosts stay NixOS-shaped, nothing is rebuilt
    assert current_system(lab, "slax") == before
    assert os.readlink(lab.host("slax").path(PROFILE)) == "system-1-link"
    assert "os: nixos" in lab.inventory_path.read_text()


def test_lab_up_nixos_some_hosts(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(3, nixos=["slax"])
    hosts = yaml.safe_load(lab.inventory_path.read_text())["hosts"]
    assert {n: h["os"] for n, h in hosts.items()} == {"snix": "linux", "slax": "nixos", "brix": "linux"}
    assert not Path(lab.host("snix").path(PROFILE)).exists()
    assert lab.exec("snix", "test -e /run/current-system").returncode == 1
    assert current_system(lab, "slax").endswith("-nixos-system-slax-lab")


def test_a_generation_without_sshd_stops_answering_and_the_previous_one_answers_again(
    nixos_lab: Lab,
) -> None:
    """What a deploy's magic rollback must survive: the new generation takes sshd away."""
    import socket

    lab = nixos_lab
    first = current_system(lab, "slax")
    broken = generation(
        lab, "slax", '{ ... }: { networking.hostName = "slax"; services.openssh.enable = false; }\n'
    )
    lab.exec("slax", labnixos.switch_script(broken, "test"), check=True)

    def banner() -> bytes:
        with socket.create_connection((lab.host("slax").address, 22), timeout=2) as sock:
            sock.settimeout(2)
            return sock.recv(64)

    with pytest.raises(TimeoutError):
        banner()
    # Rolling back (what a watchdog on the host does): the previous generation's activation.
    lab.exec(
        "slax", f"nix-env -p {PROFILE} --rollback && {first}/bin/switch-to-configuration test", check=True
    )
    assert banner().startswith(b"SSH-2.0-")
    assert current_system(lab, "slax") == first


def test_a_failing_activation_script_fails_the_switch(nixos_lab: Lab) -> None:
    lab = nixos_lab
    bad = generation(
        lab,
        "slax",
        '{ ... }: { networking.hostName = "slax"; system.activationScripts.broken = "echo ran; false; echo not-reached"; '
        'system.activationScripts.after = { text = "touch /run/after-ran"; }; }\n',
    )
    result = lab.exec("slax", labnixos.switch_script(bad, "test"))
    assert result.returncode != 0
    assert b"activation script broken failed" in result.stderr
    assert b"ran" in result.stdout and b"not-reached" not in result.stdout
    # As on NixOS, the rest of the activation ran and the system switched; the deploy sees the failure.
    assert lab.exec("slax", "test -e /run/after-ran").returncode == 0
    assert current_system(lab, "slax") == bad


def test_a_host_taken_out_of_nixos_boots_plain_again(nixos_lab: Lab) -> None:
    lab = nixos_lab
    lab.up(2, nixos=["snix"])
    hosts = yaml.safe_load(lab.inventory_path.read_text())["hosts"]
    assert hosts["slax"]["os"] == "linux" and hosts["snix"]["os"] == "nixos"
    # slax restarted (its sshd_config changed) without activating its old generation.
    assert lab.exec("slax", "test -e /run/current-system").returncode == 1
    assert "authorized_keys.d" not in lab.host("slax").path("/etc/ssh/sshd_config").read_text()
    assert current_system(lab, "snix").endswith("-nixos-system-snix-lab")
