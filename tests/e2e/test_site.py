"""The whole roadmap at once: `playbooks/site.yaml` on the lab, as the README demo runs it."""

from __future__ import annotations

import json
import os

from conftest import PLAYBOOKS
from infratool_lab.services import prepare_fleet


def test_site_plans_runs_and_then_plans_nothing(lab, cli, monkeypatch):
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(prepare_fleet(lab)))
    inv = lab.inventory_path
    site = PLAYBOOKS / "site.yaml"

    first = cli("-i", inv, "--json", "plan", site, "--detailed-exitcode")
    assert first.returncode == 2, first.stderr
    planned = json.loads(first.stdout)
    tasks = {c["task"].split(".")[0] for c in planned["changes"]}
    assert {"nix", "files", "secrets_rotation", "remote_builders", "binary_cache", "secureboot"} <= tasks, (
        tasks
    )
    assert not planned["failures"]

    run = cli("-i", inv, "run", site, "--yes")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    again = cli("-i", inv, "plan", site, "--detailed-exitcode")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    for host in ("snix", "slax", "brix", "nixtv-player"):
        assert f"{host}: no changes" in again.stdout
    assert "check(s)" not in again.stdout  # a converged site plans 0 changes and 0 checks

    # The pieces work together: a client's remote build on snix, where the cache's
    # post-build hook now runs (a build for a remote client must not fail on it).
    nonce = os.urandom(6).hex()
    drv = (
        f'derivation {{ name = "site-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        'args = ["-c" "echo built > $out"]; }'
    )
    built = lab.exec("slax", ["nix-build", "--max-jobs", "0", "--no-out-link", "-E", drv])
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    out = built.stdout.decode().strip()
    assert lab.host("snix").path(out).exists() or lab.exec("snix", ["test", "-e", out]).returncode == 0
