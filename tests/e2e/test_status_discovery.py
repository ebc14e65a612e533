"""`secrets status` finds cache-key and builder-key rotations wherever the fleet keeps its playbooks.

The lab's inventory lives outside the repository (as the demo's
``.infratool-lab/hosts.yaml`` does): no ``playbooks/`` beside it or in its flake
repo. The playbook that ran a rotation is recorded in the rotation state file
(``extra.playbook`` of its entry), and status reads it from there.
"""

from __future__ import annotations

import json

from conftest import PLAYBOOKS
from helpers import ok

from infratool.rotation import state

CACHE_PLAYBOOK = PLAYBOOKS / "binary-cache.yaml"


def _rows(cli, inv):
    status = cli("-i", inv, "--json", "secrets", "status")
    return {(r["kind"], r["name"]): r for r in json.loads(status.stdout)["secrets"]}


def test_status_lists_the_cache_key_of_a_playbook_run_from_outside_the_fleet_dir(fleet, cli):
    inv = fleet.inventory_path
    assert not (inv.parent / "playbooks").exists() and not (fleet.flake_dir / "playbooks").exists()
    assert ("cache-key", "snix-cache") not in _rows(cli, inv)  # nothing ran: nothing known

    ok(cli("-i", inv, "run", CACHE_PLAYBOOK, "--yes"))
    recorded = state.load_dir(fleet.flake_dir / "secrets").rotations["cache-key/snix-cache"]
    assert recorded.extra["playbook"] == str(CACHE_PLAYBOOK.resolve())

    cache = _rows(cli, inv)[("cache-key", "snix-cache")]
    assert cache["configured"].startswith(f"{CACHE_PLAYBOOK.resolve()}:")
    assert cache["max_age"] == "365d" and cache["generation"] == 1 and cache["due"] is False
    # secrets rotate finds it by the same rule.
    dry = cli("-i", inv, "secrets", "rotate", "cache-key/snix-cache", "--dry-run")
    assert dry.returncode == 0 and "store the next signing key snix-cache-2" in dry.stdout, dry.stdout

    # A recorded playbook that is gone is skipped, not an error: status still runs.
    st_file = state.state_path(fleet.flake_dir / "secrets")
    st_file.write_text(st_file.read_text().replace(str(CACHE_PLAYBOOK.resolve()), "/nonexistent/gone.yaml"))
    status = cli("-i", inv, "--json", "secrets", "status")
    assert ("cache-key", "snix-cache") not in {
        (r["kind"], r["name"]) for r in json.loads(status.stdout)["secrets"]
    }, status.stdout


def test_a_playbook_that_includes_the_rotation_records_the_file_that_configures_it(fleet, cli, tmp_path):
    """site.yaml only includes binary-cache.yaml: the included file is what gets recorded and read."""
    inv = fleet.inventory_path
    wrapper = tmp_path / "site.yaml"
    wrapper.write_text(f"name: wrapper\nhosts: all\ntasks:\n  - include: {CACHE_PLAYBOOK.resolve()}\n")

    ok(cli("-i", inv, "run", wrapper, "--yes"))
    recorded = state.load_dir(fleet.flake_dir / "secrets").rotations["cache-key/snix-cache"]
    assert recorded.extra["playbook"] == str(CACHE_PLAYBOOK.resolve())
    cache = _rows(cli, inv)[("cache-key", "snix-cache")]
    assert cache["configured"].startswith(f"{CACHE_PLAYBOOK.resolve()}:"), cache
