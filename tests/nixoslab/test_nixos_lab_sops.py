"""sops-nix's activation on a NixOS-shaped lab host: secrets decrypted with the host's SSH key as age."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from infratool_lab import Lab
from infratool_lab import nixos as labnixos
from infratool_lab.services import add_nixos_recipients

from infratool.secrets.agekeys import ssh_ed25519_private_to_age_identity
from infratool.secrets.sopsbin import find_sops

CONFIG = """{ ... }:
{
  networking.hostName = "snix";
  sops.secrets."app/db-password" = {
    sopsFile = ../../secrets/lab-test.yaml;
    key = "app/db/password";
    owner = "nobody";
    group = "nogroup";
    mode = "0440";
    restartUnits = [ "lab-echo.service" ];
  };
  sops.secrets.plain = {
    sopsFile = ../../secrets/lab-test.yaml;
    path = "/var/lib/plain-secret";
  };
  systemd.services.lab-echo = {
    description = "a unit that restarts when its secret changes";
    wantedBy = [ "multi-user.target" ];
    script = "exec sleep 100000";
  };
}
"""


def encrypt(lab: Lab, plaintext: str, tmp: Path) -> None:
    """secrets/lab-test.yaml, encrypted to the recipients of the flake's .sops.yaml (operator + host)."""
    source = tmp / "lab-test.yaml"
    source.write_text(plaintext)
    target = lab.flake_dir / "secrets" / "lab-test.yaml"
    out = subprocess.run(
        [
            find_sops(),
            "--disable-version-check",
            "--config",
            str(lab.flake_dir / "secrets" / ".sops.yaml"),
            "--encrypt",
            "--filename-override",
            str(target),
            str(source),
        ],
        capture_output=True,
        check=True,
    ).stdout
    target.write_bytes(out)
    source.unlink()


def switch(lab: Lab, name: str, action: str = "test") -> tuple[str, subprocess.CompletedProcess[bytes]]:
    path = labnixos.build(lab.flake_dir, [name])[name]
    labnixos.copy_to_host(lab.host(name).root, path)
    return path, lab.exec(name, labnixos.switch_script(path, action))


def unit_pid(lab: Lab, name: str, unit: str) -> str:
    return lab.exec(name, f"cat /run/lab-services/{unit}.pid", check=True).stdout.decode().strip()


@pytest.fixture
def sops_lab(lab_factory: Callable[..., Lab], tmp_path: Path) -> Lab:
    lab = lab_factory(1, nixos=True)
    from infratool.onboard.scaffold import ensure_operator_repo

    ensure_operator_repo(lab.flake_dir, tmp_path / "operator.key")
    assert add_nixos_recipients(lab)  # snix's host key, as age, is now a recipient
    (lab.flake_dir / "hosts" / "snix" / "configuration.nix").write_text(CONFIG)
    return lab


def test_secrets_land_in_run_secrets_with_owner_mode_and_path(sops_lab: Lab, tmp_path: Path) -> None:
    lab = sops_lab
    canary = f"canary-{secrets.token_hex(12)}"
    encrypt(lab, f"app:\n  db:\n    password: {canary}\nplain: just-plain\n", tmp_path)
    top, result = switch(lab, "snix")
    assert result.returncode == 0, result.stderr.decode()

    got = lab.exec("snix", "cat /run/secrets/app/db-password", check=True).stdout.decode()
    assert got == canary
    stat = lab.exec("snix", "stat -L -c '%U %G %a' /run/secrets/app/db-password", check=True).stdout.decode()
    assert stat.split() == ["nobody", "nogroup", "440"]
    # /run/secrets is a generation directory of /run/secrets.d, as sops-nix makes it.
    assert lab.exec("snix", "readlink /run/secrets", check=True).stdout.decode().strip() == "/run/secrets.d/1"
    # A secret with its own path: a symlink there to /run/secrets/<name>, mode 0400 by default.
    link = lab.exec("snix", "readlink /var/lib/plain-secret", check=True).stdout.decode().strip()
    assert link == "/run/secrets/plain"
    assert lab.exec("snix", "cat /var/lib/plain-secret", check=True).stdout.decode() == "just-plain"
    assert (
        lab.exec("snix", "stat -L -c %a /var/lib/plain-secret", check=True).stdout.decode().strip() == "400"
    )
    # The host's SSH key as an age identity, readable by root only.
    assert (
        lab.exec("snix", "stat -c %a /run/secrets.d/age-keys.txt", check=True).stdout.decode().strip()
        == "600"
    )

    # The identity is the host key converted exactly as ssh-to-age (sops-nix) converts it.
    identity = ssh_ed25519_private_to_age_identity(
        lab.host("snix").path("/etc/ssh/ssh_host_ed25519_key").read_bytes()
    ).reveal()
    assert lab.host("snix").path("/run/secrets.d/age-keys.txt").read_text().split() == [identity]

    # Neither the value nor the identity shows: not in the switch's output, the host's store or logs.
    for secret in (canary, identity):
        assert secret.encode() not in result.stdout + result.stderr
        grep = lab.exec(
            "snix", ["grep", "-rl", secret, "/nix/store", "/var/log", "/etc/nix", "/etc/ssh", "/tmp"]
        )
        assert grep.stdout == b"", grep.stdout
    assert (
        canary
        not in Path(top.replace("/nix/store", str(lab.host("snix").root / "nix/store")))
        .joinpath("lab/secrets.tsv")
        .read_text()
    )


def test_a_changed_secret_restarts_its_units_and_an_unchanged_one_does_not(
    sops_lab: Lab, tmp_path: Path
) -> None:
    lab = sops_lab
    encrypt(lab, "app:\n  db:\n    password: first\nplain: p\n", tmp_path)
    _, result = switch(lab, "snix")
    assert result.returncode == 0, result.stderr.decode()
    first_pid = unit_pid(lab, "snix", "lab-echo")

    # Same secrets, another generation (a nix setting changes): the unit keeps running.
    conf = lab.flake_dir / "hosts" / "snix" / "configuration.nix"
    conf.write_text(
        CONFIG.replace(
            'networking.hostName = "snix";', 'networking.hostName = "snix"; nix.settings.cores = 2;'
        )
    )
    _, result = switch(lab, "snix")
    assert result.returncode == 0, result.stderr.decode()
    assert unit_pid(lab, "snix", "lab-echo") == first_pid

    encrypt(lab, "app:\n  db:\n    password: second\nplain: p\n", tmp_path)
    _, result = switch(lab, "snix")
    assert result.returncode == 0, result.stderr.decode()
    assert lab.exec("snix", "cat /run/secrets/app/db-password", check=True).stdout == b"second"
    second_pid = unit_pid(lab, "snix", "lab-echo")
    assert second_pid != first_pid
    assert lab.exec("snix", f"kill -0 {second_pid}").returncode == 0
    assert lab.exec("snix", f"kill -0 {first_pid}").returncode != 0
    # keepGenerations = 1: the current generation and the one before.
    gens = lab.exec("snix", "ls /run/secrets.d", check=True).stdout.decode().split()
    assert sorted(g for g in gens if g.isdigit()) == ["2", "3"]


def test_a_secret_the_host_cannot_decrypt_fails_the_activation(sops_lab: Lab, tmp_path: Path) -> None:
    lab = sops_lab
    # Encrypted to the operator only: the host's key cannot open it.
    config = lab.flake_dir / "secrets" / ".sops.yaml"
    from infratool.onboard.scaffold import remove_sops_recipient
    from infratool.secrets.agekeys import ssh_ed25519_to_age_recipient

    assert remove_sops_recipient(config, ssh_ed25519_to_age_recipient(lab.host("snix").host_key_public))
    encrypt(lab, "app:\n  db:\n    password: x\nplain: p\n", tmp_path)
    before = lab.exec("snix", "readlink -f /run/current-system", check=True).stdout
    _, result = switch(lab, "snix")
    assert result.returncode != 0
    assert b"failed to decrypt" in result.stderr
    # The activation stopped before /run/current-system moved.
    assert lab.exec("snix", "readlink -f /run/current-system", check=True).stdout == before
    assert lab.exec("snix", "test -e /run/secrets/app/db-password").returncode != 0
    assert os.path.exists(lab.host("snix").path("/run/secrets.d/age-keys.txt"))
