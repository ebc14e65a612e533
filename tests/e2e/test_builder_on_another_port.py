"""Issue 13.15: a builder whose sshd listens on 2222, as real fleets run it.

Nix 2.8's ``ssh-ng://`` URIs cannot carry a port. Each client gets an
ssh_config alias (``Host infratool-builder-snix`` with HostName, Port, the
key and the pinned host key), and the machines line names the alias.
"""

from __future__ import annotations

import os
import subprocess

from conftest import PLAYBOOKS
from infratool_lab import files

PLAYBOOK = PLAYBOOKS / "remote-builders.yaml"
ALIAS = "infratool-builder-snix"


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out.decode(errors="replace") if isinstance(out, bytes) else out
    return result


def test_a_builder_on_port_2222_builds_for_its_clients(fleet, cli):
    lab, inv = fleet, fleet.inventory_path
    snix = lab.set_port("snix", 2222)
    assert "port: 2222" in inv.read_text()
    assert f"[{snix.address}]:2222 " in lab.known_hosts_path.read_text()
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))  # verify included: ping and a remote build
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0

    for client in ("slax", "brix"):
        config = lab.host(client).path("/root/.ssh/config").read_text()
        assert f"Host {ALIAS}\n  HostName {snix.address}\n  Port 2222\n" in config
        assert "StrictHostKeyChecking yes" in config
        pinned = lab.host(client).path("/etc/nix/remote-builders/id_ed25519.known_hosts").read_text()
        assert f"{ALIAS} {snix.host_key_public} " in pinned
        # A build through the client's own configuration runs on snix, over port 2222.
        nonce = os.urandom(6).hex()
        expr = (
            f'derivation {{ name = "port-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; '
            'args = [ "-c" "read h < /proc/sys/kernel/hostname; echo $h > $out" ]; }'
        )
        built = ok(
            lab.exec(client, ["nix-build", "--no-out-link", "--max-jobs", "0", "-E", expr], timeout=120)
        )
        out = built.stdout.decode().strip()
        assert snix.path(out).read_text() == "snix\n"
        assert f"on 'ssh-ng://nixremote@{ALIAS}'" in built.stderr.decode()
    assert f"Server listening on {snix.address} port 2222." in snix.sshd_log.read_text()


def test_the_lab_moves_a_host_to_another_port_and_back(lab):
    snix = lab.set_port("snix", 2222)
    assert files.sshd_config(snix.address, 2222) == snix.path(files.SSHD_CONFIG_PATH).read_text()
    assert lab.exec("snix", ["true"]).returncode == 0
    # `up` keeps the moved port; set_port moves it back.
    assert {h.name: h.port for h in lab.up(4)}["snix"] == 2222
    assert lab.set_port("snix", 22).port == 22
    assert "port: 2222" not in lab.inventory_path.read_text()
