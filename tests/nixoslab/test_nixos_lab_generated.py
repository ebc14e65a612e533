"""Every task's generated NixOS modules evaluate against the lab's module system, on a `--nixos` lab.

The site playbook runs with ``--no-deploy`` (deploying is the deploy engine's
part): it writes ``hosts/<host>/generated/*.nix`` into the lab flake, and each
host's toplevel is then built from the flake, which forces every option the
modules define. A generated module that sets an undeclared option, or a value
of the wrong type, fails that build.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import PLAYBOOKS
from infratool_lab import Lab
from infratool_lab import nixos as labnixos
from infratool_lab.errors import LabError
from infratool_lab.services import prepare_fleet

FAMILIES = {
    "snix": {
        "nix-settings.nix",
        "remote-builders-builder.nix",
        "binary-cache-snix-cache-server.nix",
        "lanzaboote.nix",
    },
    "slax": {"nix-settings.nix", "remote-builders.nix", "binary-cache-snix-cache.nix", "lanzaboote.nix"},
    "nixtv-player": {"nix-settings.nix", "remote-builders.nix", "binary-cache-snix-cache.nix"},
}


def options(path: str) -> dict:
    """Every option the host's modules define, as the toplevel rendered it."""
    return json.loads(Path(path, "lab", "options.json").read_text())


@pytest.fixture
def generated(lab_factory: Callable[..., Lab], cli, monkeypatch) -> Lab:
    lab = lab_factory(4, nixos=True)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(prepare_fleet(lab)))
    run = cli("-i", lab.inventory_path, "run", PLAYBOOKS / "site.yaml", "--yes", "--no-deploy")
    # Without a deploy the NixOS hosts' own verifies (cache substitution) cannot pass yet.
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
    return lab


def test_every_generated_module_evaluates_and_a_wrong_one_fails(generated: Lab) -> None:
    lab = generated
    for host, expected in FAMILIES.items():
        found = {p.name for p in (lab.flake_dir / "hosts" / host / "generated").glob("*.nix")}
        assert expected <= found, (host, found)
    built = labnixos.build(lab.flake_dir, ["snix", "slax", "brix", "nixtv-player"])

    snix = options(built["snix"])
    assert snix["services"]["nginx"]["virtualHosts"]["snix-cache"]["root"] == "/var/lib/nixcache"
    assert "binary-cache/snix-cache/secret-key" in snix["sops"]["secrets"]
    assert snix["users"]["users"]["nixremote"]["openssh"]["authorizedKeys"]["keys"]
    assert snix["boot"]["lanzaboote"]["enable"] is True
    assert snix["nix"]["settings"]["post-build-hook"].startswith("/nix/store/")
    assert snix["networking"]["firewall"]["allowedTCPPorts"] == [80]

    slax = options(built["slax"])
    assert slax["nix"]["distributedBuilds"] is True
    machine = slax["nix"]["buildMachines"][0]
    assert (
        machine["protocol"] == "ssh-ng" and machine["sshKey"] == "/run/secrets/remote-builders/slax/ssh_key"
    )
    assert "infratool-remote-builder-snix" in slax["programs"]["ssh"]["knownHosts"]
    assert any(url.startswith("http://") for url in slax["nix"]["settings"]["substituters"])

    # What the host would use, rendered by the toplevel.
    machines = Path(built["slax"], "etc/nix/machines").read_text()
    assert machines.startswith("ssh-ng://nixremote@infratool-builder-snix x86_64-linux /run/secrets/")
    nginx = Path(built["snix"], "lab/services/nginx").read_text()
    assert " -c /nix/store/" in nginx
    assert "lanzaboote" in Path(built["snix"], "lab/lanzaboote.json").read_text()

    # The same modules with one option misspelt, or of the wrong type: the build fails.
    module = lab.flake_dir / "hosts" / "slax" / "generated" / "remote-builders.nix"
    text = module.read_text()
    assert "distributedBuilds = true;" in text
    module.write_text(text.replace("distributedBuilds = true;", "distributedBuild = true;"))
    with pytest.raises(LabError) as err:
        labnixos.build(lab.flake_dir, ["slax"])
    assert "The option `nix.distributedBuild' does not exist." in str(err.value)
    assert "hosts/slax/generated/remote-builders.nix" in str(err.value)

    module.write_text(text.replace("distributedBuilds = true;", 'distributedBuilds = "yes";'))
    with pytest.raises(LabError) as err:
        labnixos.build(lab.flake_dir, ["slax"])
    assert "A definition for option `nix.distributedBuilds' is not of type `boolean'." in str(err.value)

    module.write_text(text)
    assert labnixos.build(lab.flake_dir, ["slax"])["slax"].startswith("/nix/store/")


def test_activated_generated_modules_work_remote_build_and_cache_server(generated: Lab) -> None:
    """Switched to, the generated modules configure real things: a build through the builder, nginx, secrets."""
    lab = generated
    built = labnixos.build(lab.flake_dir, ["snix", "slax"])
    for name in ("snix", "slax"):
        labnixos.copy_to_host(lab.host(name).root, built[name])
        switched = lab.exec(name, labnixos.switch_script(built[name], "switch"))
        assert switched.returncode == 0, switched.stderr.decode()

    # sops-nix put the client's builder key and the cache's signing key in place.
    mode = lab.exec("slax", "stat -c '%a %U' /run/secrets/remote-builders/slax/ssh_key", check=True)
    assert mode.stdout.decode().split() == ["400", "root"]
    mode = lab.exec("snix", "stat -c %a /run/secrets/binary-cache/snix-cache/secret-key", check=True)
    assert mode.stdout.decode().strip() == "600"

    # slax builds through snix with nothing but its activated /etc/nix/machines,
    # /etc/ssh/ssh_config and ssh_known_hosts; snix accepts the key from
    # /etc/ssh/authorized_keys.d/nixremote.
    nonce = os.urandom(6).hex()
    drv = (
        f'derivation {{ name = "nixos-lab-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        'args = ["-c" "echo built > $out"]; }'
    )
    result = lab.exec("slax", ["nix-build", "--max-jobs", "0", "--no-out-link", "-E", drv])
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"on 'ssh-ng://nixremote@infratool-builder-snix'" in result.stderr
    out = result.stdout.decode().strip()
    assert lab.exec("snix", ["nix-store", "--check-validity", out]).returncode == 0

    # nginx, a unit of snix's generation, serves the cache directory on the vhost's address.
    address = lab.host("snix").address
    lab.exec("snix", "echo 'StoreDir: /nix/store' > /var/lib/nixcache/nix-cache-info", check=True)
    got = lab.exec("slax", ["curl", "-fsS", f"http://{address}/nix-cache-info"], check=True)
    assert got.stdout == b"StoreDir: /nix/store\n"
