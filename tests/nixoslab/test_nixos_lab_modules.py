"""The lab's module system (a stand-in for nixpkgs' lib.evalModules), evaluated by the real nix-instantiate.

No lab needed: these evaluate modules with the stand-in's ``nixosSystem``
and force the toplevel's derivation (which renders every defined option, so a
type error anywhere fails).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from infratool_lab.nixos import STAND_IN

from infratool import nixgen
from infratool.rotation.timer import TimerOptions, render_nixos_module
from infratool.tasks.secureboot.lanzaboote import render_module as lanzaboote_module

pytestmark = pytest.mark.skipif(not os.access("/usr/bin/nix-instantiate", os.X_OK), reason="needs nix")


def evaluate(
    tmp_path: Path, modules: dict[str, str], expr: str = "toplevel.drvPath"
) -> subprocess.CompletedProcess[str]:
    """Evaluate a host of ``modules`` (file name → text) with the stand-in; ``expr`` over config/toplevel."""
    paths = []
    for name, text in modules.items():
        (tmp_path / name).write_text(text)
        paths.append(f"./{name}")
    (tmp_path / "eval.nix").write_text(
        f"""let
  lab = import {STAND_IN}/default.nix;
  host = lab.nixosSystem {{ system = "x86_64-linux"; modules = [ {" ".join(paths)} ]; }};
  config = host.config;
  toplevel = config.system.build.toplevel;
in {expr}
"""
    )
    return subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(tmp_path / "eval.nix")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NIX_PATH": "", "NIX_CONFIG": "build-users-group ="},
        check=False,
    )


def value(tmp_path: Path, modules: dict[str, str], expr: str):
    proc = evaluate(tmp_path, modules, expr)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- the module system --------------------------------------------------------------


def test_priorities_conditions_and_merges(tmp_path: Path) -> None:
    modules = {
        "a.nix": """{ lib, ... }: {
  nix.settings.trusted-users = lib.mkDefault [ "alice" ];
  nix.distributedBuilds = lib.mkForce false;
  networking.firewall.allowedTCPPorts = [ 80 ];
  programs.ssh.extraConfig = "Host a";
}""",
        "b.nix": """{ lib, config, ... }: lib.mkMerge [
  { nix.settings.trusted-users = [ "root" "bob" ]; nix.distributedBuilds = true; }
  (lib.mkIf (config.networking.hostName == "snix") { networking.firewall.allowedTCPPorts = [ 443 ]; })
  (lib.mkIf false { networking.firewall.allowedTCPPorts = [ 8080 ]; })
  { networking.hostName = "snix"; programs.ssh.extraConfig = "Host b"; }
]""",
    }
    got = value(
        tmp_path,
        modules,
        "{ inherit (config.nix.settings) trusted-users; inherit (config.nix) distributedBuilds; "
        "ports = config.networking.firewall.allowedTCPPorts; ssh = config.programs.ssh.extraConfig; }",
    )
    # Plain definitions concatenate (nix.nix's own [ "root" ] first, as in nixpkgs); mkDefault loses.
    assert got["trusted-users"] == ["root", "root", "bob"]
    assert got["distributedBuilds"] is False  # mkForce beats a plain definition
    assert sorted(got["ports"]) == [80, 443]  # lists from all modules; mkIf false contributes nothing
    assert got["ssh"] == "Host a\nHost b"  # lines concatenate


def test_submodules_get_their_name_and_defaults(tmp_path: Path) -> None:
    modules = {
        "a.nix": """{ config, ... }: {
  sops.secrets."builders/key" = { sopsFile = ./a.nix; key = "k"; };
  programs.ssh.knownHosts.builder.publicKey = "ssh-ed25519 AAAA";
  nix.buildMachines = [ { hostName = "b"; sshKey = config.sops.secrets."builders/key".path; } ];
}""",
    }
    got = value(
        tmp_path,
        modules,
        '{ s = config.sops.secrets."builders/key"; k = config.programs.ssh.knownHosts.builder; '
        "m = builtins.head config.nix.buildMachines; }",
    )
    assert got["s"]["path"] == "/run/secrets/builders/key"
    assert got["s"]["key"] == "k" and got["s"]["mode"] == "0400" and got["s"]["owner"] is None
    assert got["k"]["hostNames"] == ["builder"]
    assert got["m"]["sshKey"] == "/run/secrets/builders/key" and got["m"]["protocol"] == "ssh"


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("{ boot.lanzaboote.enabel = true; }", "The option `boot.lanzaboote.enabel' does not exist."),
        ("{ nix.buildMachine = [ ]; }", "The option `nix.buildMachine' does not exist."),
        (
            '{ sops.secrets.x = { sopsFile = ./bad.nix; restartUnit = [ "a" ]; }; }',
            "The option `sops.secrets.x.restartUnit' does not exist.",
        ),
        (
            '{ nix.buildMachines = [ { hostName = "b"; maxjobs = 2; } ]; }',
            "maxjobs' does not exist.",
        ),
        (
            '{ nix.distributedBuilds = "yes"; }',
            "A definition for option `nix.distributedBuilds' is not of type `boolean'.",
        ),
        (
            "{ networking.firewall.allowedTCPPorts = [ 70000 ]; }",
            "is not of type `16 bit unsigned integer; between 0 and 65535 (both inclusive)'",
        ),
        (
            '{ boot.lanzaboote.pkiBundle = "relative/dir"; }',
            "A definition for option `boot.lanzaboote.pkiBundle' is not of type `null or absolute path not in the Nix store'.",
        ),
        (
            '{ users.users.b.openssh.authorizedKeys.keys = [ "one\\ntwo" ]; }',
            "is not of type `(optionally newline-terminated) single-line string'",
        ),
    ],
)
def test_unknown_options_and_type_errors_fail_naming_the_file(
    tmp_path: Path, module: str, message: str
) -> None:
    proc = evaluate(tmp_path, {"bad.nix": module})
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert str(tmp_path / "bad.nix") in proc.stderr, proc.stderr


# -- what infratool generates -------------------------------------------------------------


def test_generated_lanzaboote_module_evaluates_and_a_misspelt_one_does_not(tmp_path: Path) -> None:
    text = lanzaboote_module("/var/lib/sbctl")
    got = value(
        tmp_path,
        {"lanzaboote.nix": text},
        "{ l = config.boot.lanzaboote; sb = config.boot.loader.systemd-boot.enable; drv = toplevel.drvPath; }",
    )
    assert got["l"]["enable"] is True and got["l"]["pkiBundle"] == "/var/lib/sbctl"
    assert got["l"]["privateKeyFile"] == "/var/lib/sbctl/keys/db/db.key"
    assert got["sb"] is False  # the module's lib.mkForce false
    # The same module with one option misspelt, and with a wrong type: both refused.
    wrong = text.replace("enable = true", "enabel = true")
    assert wrong != text
    proc = evaluate(tmp_path, {"lanzaboote.nix": wrong})
    assert proc.returncode != 0 and "boot.lanzaboote.enabel' does not exist" in proc.stderr
    typed = text.replace('pkiBundle = "/var/lib/sbctl"', "pkiBundle = 7")
    proc = evaluate(tmp_path, {"lanzaboote.nix": typed})
    assert proc.returncode != 0 and "boot.lanzaboote.pkiBundle' is not of type" in proc.stderr


def test_generated_nix_settings_module_evaluates(tmp_path: Path) -> None:
    text = nixgen.module(
        {
            "nix.settings": {
                "auto-optimise-store": True,
                "max-jobs": 4,
                "experimental-features": ["nix-command", "flakes"],
            }
        }
    )
    got = value(tmp_path, {"settings.nix": text}, "config.nix.settings")
    assert got["max-jobs"] == 4 and got["auto-optimise-store"] is True
    assert got["experimental-features"] == ["nix-command", "flakes"]


def test_generated_rotation_timer_module_evaluates(tmp_path: Path) -> None:
    opts = TimerOptions(
        flake=Path("/var/lib/infratool/fleet"),
        inventory=Path("/var/lib/infratool/fleet/hosts.yaml"),
        age_key_file=Path("/var/lib/infratool/age.key"),
        executable="/run/current-system/sw/bin/infratool",
    )
    got = value(
        tmp_path,
        {"timer.nix": render_nixos_module(opts)},
        "{ s = config.systemd.services.infratool-rotate; t = config.systemd.timers.infratool-rotate; drv = toplevel.drvPath; }",
    )
    assert got["t"]["wantedBy"] == ["timers.target"]
    assert got["t"]["timerConfig"]["Persistent"] == "true"
    assert "ExecStart" in got["s"]["serviceConfig"]


@pytest.mark.parametrize("script", sorted(p.name for p in (STAND_IN / "scripts").glob("*.sh")))
def test_host_side_scripts_are_posix_sh_without_python(script: str) -> None:
    """NixOS hosts have no Python: the activation runs with sh, coreutils and sops only."""
    path = STAND_IN / "scripts" / script
    assert subprocess.run(["dash", "-n", str(path)], capture_output=True, check=False).returncode == 0
    assert "python" not in path.read_text()
