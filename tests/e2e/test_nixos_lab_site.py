"""Issue 14 §3 on `lab up --nixos` hosts: the whole site playbook, and the binary cache after the deploy.

One four-host `--nixos` lab for the module; ``site`` runs `playbooks/site.yaml`
on it once and keeps what the plan, the run and the plan after said, so each
test reads them whatever order the tests run in. The server's probe is
pushed in its own deploy's confirm (only then has sops-nix installed the
signing key) and the clients' checks run in theirs, over a new connection:
one run converges, every host deployed, and the next plan is empty.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import PLAYBOOKS, Cli, ok, tokend_accepts
from infratool_lab import Lab, LabUnavailable
from infratool_lab import nixos as labnixos
from infratool_lab.services import POSTGRES_HOST, TOKEND_HOST, prepare_fleet

from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore
from infratool.tasks.binary_cache.keys import public_key

HOSTS = ["snix", "slax", "brix", "nixtv-player"]
CLIENTS = ["slax", "brix", "nixtv-player"]
SITE = PLAYBOOKS / "site.yaml"
STORE = "/var/lib/nixcache"
NIX = "nix --extra-experimental-features nix-command"
NOT_SIGNED = "is not signed by any of the keys in 'trusted-public-keys'"


@dataclass
class Site:
    """The lab, the env for the CLI, and what the first plan, the run and the plan after it said."""

    lab: Lab
    env: dict[str, str]
    plan: subprocess.CompletedProcess
    run: subprocess.CompletedProcess
    again: subprocess.CompletedProcess
    again_text: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("nixos-lab-site")
    try:
        Lab(root / "lab").preflight()
    except LabUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no lab on this CI machine: {exc}")
        pytest.skip(f"no lab on this machine: {exc}")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    octet = 10 + (int(worker) if worker.isdigit() else 0) % 240
    lab = Lab(root / "lab", subnet=f"127.{octet}.{random.SystemRandom().randrange(256)}")
    lab.up(4, nixos=True)
    try:
        key = prepare_fleet(lab)
        env = {
            "NIX_CONFIG": labnixos.CONTROLLER_NIX_CONFIG,
            "SOPS_AGE_KEY_FILE": str(key),
            # The per-test audit log fixture is set up after this module's lab.
            "INFRATOOL_AUDIT_LOG": str(root / "audit.jsonl"),
            "XDG_STATE_HOME": str(root / "state"),
        }
        cli = Cli(root)
        inv = lab.inventory_path
        plan = cli("-i", inv, "--json", "plan", SITE, "--detailed-exitcode", env=env)
        run = cli("-i", inv, "run", SITE, "--yes", env=env, timeout=900)
        again = cli("-i", inv, "--json", "plan", SITE, "--detailed-exitcode", env=env)
        again_text = cli("-i", inv, "plan", SITE, "--detailed-exitcode", env=env)
        yield Site(lab, env, plan, run, again, again_text)
    finally:
        lab.down()


def test_the_site_converges_in_one_run_deploying_every_host(site):
    assert site.plan.returncode == 2, site.plan.stderr[-3000:]
    planned = json.loads(site.plan.stdout)
    assert not planned["failures"]
    deploys = {c["host"] for c in planned["changes"] if c["op"] == "nixos.deploy"}
    assert deploys == set(HOSTS)

    out = site.run.stdout + site.run.stderr
    assert site.run.returncode == 0, site.run.stdout[-4000:] + site.run.stderr[-4000:]
    assert "the host rolled back" not in out
    for name in HOSTS:
        assert f"deploy {name}: build, copy, activate, verify, commit" in site.run.stdout
    # In parallel (by order, not time): every deploy under way before the first one finished.
    events = site.run.stderr.splitlines()
    started = [i for i, ln in enumerate(events) if re.search(r"\] (\S+): applying deploy \1:", ln)]
    assert len(started) == len(HOSTS), site.run.stderr[-3000:]
    hosts = "|".join(map(re.escape, HOSTS))
    finished = [
        i for i, ln in enumerate(events) if i > min(started) and re.search(rf"\] ({hosts}): changed ", ln)
    ]
    assert finished and max(started) < min(finished), [events[i] for i in (*started, *finished)]
    # What the confirm of each deploy proved, over a new connection, before the commit.
    rows = {ln.split()[0]: ln for ln in site.run.stdout.splitlines() if "status=changed" in ln}
    assert "serves http://" in rows["snix"] and "probe signed by snix-cache-1" in rows["snix"]
    for name in CLIENTS:
        assert "substituted /nix/store/" in rows[name], rows[name]
        assert "a build ran on snix" in rows[name], rows[name]
        assert rows[name].count("substituted /nix/store/") == 1  # a retried confirm reports its last try

    # Converged: 0 changes, 0 deploys, 0 checks.
    assert site.again.returncode == 0, site.again.stdout[-3000:] + site.again.stderr[-3000:]
    assert json.loads(site.again.stdout)["changes"] == []
    assert site.again_text.returncode == 0
    assert "check(s)" not in site.again_text.stdout and "deploy" not in site.again_text.stdout


def test_the_sites_rotation_reaches_the_nixos_services_through_sops_nix(site, monkeypatch):
    """The secrets part of the site on NixOS hosts: tokend (a NixOS unit reading
    /run/secrets) and PostgreSQL (a command consumer, run by its oneshot unit) take
    the rotated values; infratool never wrote them over SSH, and no value is in a module."""
    lab = site.lab
    assert site.run.returncode == 0, site.run.stdout[-4000:] + site.run.stderr[-4000:]
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", site.env["SOPS_AGE_KEY_FILE"])
    values = {k: str(v.reveal()) for k, v in SopsStore(lab.flake_dir / "secrets").read("lab.yaml").items()}
    token, password = values["tokend/token"], values["postgres/app"]
    installed = ok(lab.exec(TOKEND_HOST, ["cat", "/run/secrets/tokend/token"])).stdout.decode().strip()
    assert installed == token
    assert tokend_accepts(lab, token) and not tokend_accepts(lab, token[::-1])
    assert not lab.host(TOKEND_HOST).path("/var/lib/tokend/token").exists()
    login = (
        "read -r PGPASSWORD && export PGPASSWORD && "
        f"psql 'host={lab.host(POSTGRES_HOST).address} user=app dbname=postgres' -tAc 'select 1'"
    )
    assert ok(lab.exec(POSTGRES_HOST, login, input=password.encode() + b"\n")).stdout.strip() == b"1"
    assert lab.exec(POSTGRES_HOST, login, input=b"not-the-password\n").returncode != 0
    for host in (TOKEND_HOST, POSTGRES_HOST):
        module = (lab.flake_dir / "hosts" / host / "generated" / "secrets-rotation.nix").read_text()
        assert token not in module and password not in module
    printed = site.run.stdout + site.run.stderr
    assert token not in printed and password not in printed


def _built_on_snix(lab: Lab, hook: bool) -> str:
    """A new input-addressed path built on snix; ``hook`` False keeps the post-build hook from pushing it."""
    nonce = os.urandom(6).hex()
    expr = (
        f'derivation {{ name = "nixos-cache-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        f'args = [ "-c" "echo {nonce} > $out" ]; }}'
    )
    argv = ["nix-build", "--no-out-link", "-E", expr]
    if not hook:
        argv += ["--option", "post-build-hook", ""]
    return ok(lab.exec("snix", argv)).stdout.decode().strip()


def _valid(lab: Lab, host: str, path: str) -> bool:
    return lab.exec(host, ["nix-store", "--check-validity", path]).returncode == 0


def test_a_nixos_client_substitutes_what_the_nixos_server_built_and_refuses_another_key(site):
    assert site.run.returncode == 0, site.run.stdout[-3000:]
    lab = site.lab
    url = f"http://{lab.host('snix').address}"

    # snix builds; its post-build hook (the generated module's) pushes the path, signed.
    built = _built_on_snix(lab, hook=True)
    for client in CLIENTS:
        assert not _valid(lab, client, built)
    # Each client's own Nix, with the settings its deploy activated, substitutes it.
    for client in CLIENTS:
        got = ok(lab.exec(client, ["nix-store", "--realise", built], timeout=120))
        assert f"from '{url}'" in got.stderr.decode(), got.stderr.decode()[-1000:]
        assert _valid(lab, client, built)
        sigs = ok(lab.exec(client, f"{NIX} path-info --sigs {built}")).stdout.decode()
        assert sigs.split()[1].startswith("snix-cache-"), sigs  # path, then its signatures

    # A path in the cache signed by another key: the client's Nix refuses it.
    foreign = _built_on_snix(lab, hook=False)
    ok(
        lab.exec(
            "snix",
            "nix-store --generate-binary-cache-key evil-1 /tmp/evil.sk /tmp/evil.pk && "
            f"{NIX} copy --to 'file://{STORE}?secret-key=/tmp/evil.sk' {foreign}",
        )
    )
    assert lab.host("snix").path(f"{STORE}/{foreign[11:43]}.narinfo").exists()
    refused = lab.exec("slax", ["nix-store", "--realise", foreign], timeout=120)
    assert refused.returncode != 0 and NOT_SIGNED in refused.stderr.decode(), refused.stderr.decode()[-1000:]
    assert not _valid(lab, "slax", foreign)


def _cache_keys(lab: Lab) -> dict[str, str]:
    """The cache's keys in the lab repo's sops file (the test holds the operator age key)."""
    values = SopsStore(lab.flake_dir / "secrets").read("binary-cache.yaml")
    prefix = "binary-cache/snix-cache/"
    return {k.removeprefix(prefix): v.reveal() for k, v in values.items() if k.startswith(prefix)}


def test_a_cache_key_rotation_on_a_nixos_fleet_deploys_through_the_engine(site, monkeypatch):
    """`secrets rotate cache-key/NAME`, no deploy_command: each phase's deploys confirmed by its own check."""
    assert site.run.returncode == 0, site.run.stdout[-3000:]
    lab, inv = site.lab, site.lab.inventory_path
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", site.env["SOPS_AGE_KEY_FILE"])
    old = _cache_keys(lab)["secret-key"]
    # `secrets rotate` finds the cache's playbook entry beside hosts.yaml, as in a fleet repo.
    if not (Path(inv).parent / "playbooks").exists():
        shutil.copytree(PLAYBOOKS, Path(inv).parent / "playbooks")
    cli = Cli(lab.root)
    rotated = cli("-i", inv, "secrets", "rotate", "cache-key/snix-cache", "--yes", env=site.env, timeout=900)
    assert rotated.returncode == 0, rotated.stdout[-4000:] + rotated.stderr[-4000:]
    # Clients deployed twice (trust both keys, then only the new one), the server twice (sign with new,
    # then its module names secret-key again): each a deploy through the engine, none a nixos-rebuild.
    deployed = [ln for ln in rotated.stderr.splitlines() if ": applying deploy " in ln]
    for name in HOSTS:
        assert (
            sum(
                f"{name}: applying deploy {name}: build, copy, activate, verify, commit" in ln
                for ln in deployed
            )
            == 2
        )
    assert "nixos-rebuild" not in rotated.stdout + rotated.stderr

    keys = _cache_keys(lab)
    assert keys["secret-key"].startswith("snix-cache-2:") and "next-secret-key" not in keys
    new_public, old_public = public_key(Secret(keys["secret-key"])), public_key(Secret(old))
    for client in CLIENTS:
        conf = lab.exec(client, "cat /etc/nix/nix.conf", check=True).stdout.decode()
        assert new_public in conf and old_public not in conf, conf
    installed = ok(
        lab.exec(
            "snix",
            f"{NIX} key convert-secret-to-public < /run/secrets/binary-cache/snix-cache/secret-key",
        )
    )
    assert installed.stdout.decode().strip() == new_public

    # A client substitutes what snix builds now, signed by the new key ...
    built = _built_on_snix(lab, hook=True)
    ok(lab.exec("brix", ["nix-store", "--realise", built], timeout=120))
    assert "snix-cache-2:" in ok(lab.exec("brix", f"{NIX} path-info --sigs {built}")).stdout.decode()
    # ... and refuses a path signed by the retired key.
    stale = _built_on_snix(lab, hook=False)
    put = lab.exec(
        "snix",
        f"umask 077; cat > /tmp/old.sk && {NIX} copy --to 'file://{STORE}?secret-key=/tmp/old.sk' {stale}",
        input=old.encode(),
    )
    ok(put)
    refused = lab.exec("brix", ["nix-store", "--realise", stale], timeout=120)
    assert refused.returncode != 0 and NOT_SIGNED in refused.stderr.decode(), refused.stderr.decode()[-1000:]
    lab.exec("snix", "rm -f /tmp/old.sk")

    # Nothing owed: the site plans no change and no deploy after the rotation.
    again = cli("-i", inv, "plan", SITE, "--detailed-exitcode", env=site.env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
