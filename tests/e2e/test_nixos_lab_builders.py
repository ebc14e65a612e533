"""Issue 14 §3 on `lab up --nixos` hosts: builders verified after the deploy; sshd taken away and given back.

One four-host `--nixos` lab for the module. The generated modules are
evaluated by the lab's module system and switched to by the deploy engine.
"""

from __future__ import annotations

import os
import random

import pytest
import yaml
from helpers import PLAYBOOKS
from infratool_lab import Lab, LabUnavailable
from infratool_lab import nixos as labnixos
from infratool_lab.services import prepare_fleet

from infratool import inventory as inventory_mod
from infratool.remote import Remote

HOSTS = ["snix", "slax", "brix", "nixtv-player"]


@pytest.fixture(scope="module")
def nixlab(tmp_path_factory):
    root = tmp_path_factory.mktemp("nixos-lab-builders")
    try:
        Lab(root).preflight()
    except LabUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no lab on this CI machine: {exc}")
        pytest.skip(f"no lab on this machine: {exc}")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    subnet = (
        f"127.{10 + (int(worker) if worker.isdigit() else 0) % 240}.{random.SystemRandom().randrange(256)}"
    )
    lab = Lab(root, subnet=subnet)
    lab.up(4, nixos=True)
    try:
        key = prepare_fleet(lab)
        lab.env = {  # type: ignore[attr-defined]
            "NIX_CONFIG": labnixos.CONTROLLER_NIX_CONFIG,
            "SOPS_AGE_KEY_FILE": str(key),
        }
        yield lab
    finally:
        lab.down()


def running(lab: Lab, name: str) -> str:
    host = inventory_mod.load(lab.inventory_path).hosts[name]
    with Remote(host, connect_timeout=5) as r:
        return r.run("readlink -f /run/current-system").stdout.strip()


def test_builders_work_after_the_deploy_and_the_fleet_converges(nixlab, cli):
    run = cli("-i", nixlab.inventory_path, "run", PLAYBOOKS / "remote-builders.yaml", "--yes", env=nixlab.env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for name in HOSTS:
        assert f"deploy {name}: build, copy, activate, verify, commit" in run.stdout
    # slax builds through snix with what its new generation activated (machines, ssh_config, the key secret).
    drv = (
        f'derivation {{ name = "after-deploy-{os.urandom(4).hex()}"; system = "x86_64-linux"; '
        'builder = "/bin/sh"; args = ["-c" "echo built > $out"]; }'
    )
    built = nixlab.exec("slax", ["nix-build", "--max-jobs", "0", "--no-out-link", "-E", drv])
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    assert b"on 'ssh-ng://nixremote@infratool-builder-snix'" in built.stderr
    out = built.stdout.decode().strip()
    assert nixlab.exec("snix", ["nix-store", "--check-validity", out]).returncode == 0
    plan = cli(
        "-i",
        nixlab.inventory_path,
        "plan",
        PLAYBOOKS / "remote-builders.yaml",
        "--detailed-exitcode",
        env=nixlab.env,
    )
    assert plan.returncode == 0, plan.stdout[-3000:]


def test_a_generation_without_sshd_is_rolled_back_by_the_host_and_answers_on_its_pinned_key(
    nixlab, cli, tmp_path
):
    before = running(nixlab, "brix")
    conf = nixlab.flake_dir / "hosts" / "brix" / "configuration.nix"
    original = conf.read_text()
    conf.write_text('{ ... }: { networking.hostName = "brix"; services.openssh.enable = false; }\n')
    book = tmp_path / "nix.yaml"
    task = {"task": "nix.settings", "with": {"settings": {"max-jobs": 5}}}
    book.write_text(yaml.safe_dump({"name": "nix", "hosts": "all", "tasks": [task]}))
    try:
        run = cli(
            "-i",
            nixlab.inventory_path,
            "run",
            book,
            "--yes",
            "--confirm-timeout",
            "8",
            env=nixlab.env,
            timeout=600,
        )
    finally:
        conf.write_text(original)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert "rolled back (not confirmed within 8s" in out, [ln for ln in out.splitlines() if "brix" in ln][-3:]
    assert "did not answer on the pinned key" in out, [ln[-400:] for ln in out.splitlines() if "brix" in ln][
        -3:
    ]
    assert running(nixlab, "brix") == before  # back, on its pinned key, on the previous system
    for name in ("snix", "slax", "nixtv-player"):
        conf_text = nixlab.exec(name, "cat /etc/nix/nix.conf", check=True).stdout.decode()
        assert "max-jobs = 5" in conf_text
    again = cli("-i", nixlab.inventory_path, "run", book, "--yes", env=nixlab.env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "deploy brix" in again.stdout and "deploy snix" not in again.stdout
    assert "max-jobs = 5" in nixlab.exec("brix", "cat /etc/nix/nix.conf", check=True).stdout.decode()


def test_a_nixos_client_whose_builds_do_not_reach_the_builder_rolls_back(nixlab, cli, tmp_path):
    """The builder check runs in the client's confirm window: a real build that fails there rolls it back."""
    first = cli(
        "-i", nixlab.inventory_path, "run", PLAYBOOKS / "remote-builders.yaml", "--yes", env=nixlab.env
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = running(nixlab, "brix")
    conf = nixlab.flake_dir / "hosts" / "brix" / "configuration.nix"
    original = conf.read_text()
    # brix's own configuration turns distributed builds off: its new generation activates
    # fine, but a --max-jobs 0 build has nowhere to go.
    conf.write_text(
        '{ lib, ... }: { networking.hostName = "brix"; nix.distributedBuilds = lib.mkForce false; }\n'
    )
    book = yaml.safe_load((PLAYBOOKS / "remote-builders.yaml").read_text())
    book["tasks"][0]["with"]["builders"][0]["max_jobs"] = 3  # every client's machines line changes
    changed = tmp_path / "remote-builders.yaml"
    changed.write_text(yaml.safe_dump(book))
    try:
        run = cli(
            "-i", nixlab.inventory_path, "run", changed, "--yes", "--confirm-timeout", "15", env=nixlab.env
        )
    finally:
        conf.write_text(original)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    brix = [ln for ln in run.stdout.splitlines() if ln.startswith("brix ")]
    assert brix and "status=failed" in brix[0], run.stdout[-3000:]
    assert "verify failed: remote_builders.setup" in brix[0] and "build" in brix[0], brix[0]
    assert "rolled back to its previous system" in brix[0], brix[0]
    assert running(nixlab, "brix") == before
    for name in ("slax", "nixtv-player"):
        row = next(ln for ln in run.stdout.splitlines() if ln.startswith(f"{name} "))
        assert "status=changed" in row and "a build ran on snix" in row, row
        assert " 3 2 " in nixlab.exec(name, "cat /etc/nix/machines", check=True).stdout.decode()
    assert " 8 2 " in nixlab.exec("brix", "cat /etc/nix/machines", check=True).stdout.decode()
    # Its configuration fixed, the next run deploys brix (still owed) and it builds on snix.
    again = cli("-i", nixlab.inventory_path, "run", changed, "--yes", env=nixlab.env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "deploy brix" in again.stdout and "deploy slax" not in again.stdout
    row = next(ln for ln in again.stdout.splitlines() if ln.startswith("brix "))
    assert "a build ran on snix" in row, row
