"""The whole roadmap at once: `playbooks/site.yaml` on the lab, as the README demo runs it."""

from __future__ import annotations

import json

from conftest import PLAYBOOKS

from infratool.lab.services import prepare_fleet


def test_site_plans_runs_and_then_plans_nothing(lab, cli, monkeypatch):
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(prepare_fleet(lab)))
    inv = lab.inventory_path
    site = PLAYBOOKS / "site.yaml"

    first = cli("-i", inv, "--json", "plan", site, "--detailed-exitcode")
    assert first.returncode == 2, first.stderr
    planned = json.loads(first.stdout)
    tasks = {c["task"].split(".")[0] for c in planned["changes"]}
    assert {"nix", "files", "secrets_rotation", "remote_builders", "binary_cache", "secureboot"} <= tasks, tasks
    assert not planned["failures"]

    run = cli("-i", inv, "run", site, "--yes")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    again = cli("-i", inv, "plan", site, "--detailed-exitcode")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    for host in ("snix", "slax", "brix", "nixtv-player"):
        assert f"{host}: no changes" in again.stdout
