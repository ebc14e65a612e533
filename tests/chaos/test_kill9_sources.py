"""kill -9 during rotations of secret sources (issue 18): derived groups and Vault leases converge.

- A password and its sha512-crypt hash (one staged rotation), killed after
  every step: the rerun ends with both consumers holding the sops values, the
  hash matching the password, nothing pending.
- A Vault credential killed right after the promoting sops write, before the
  previous lease is revoked: the next run records the promotion and revokes
  the previous lease (no live lease leaks).
"""

from __future__ import annotations

import pytest
import vaultserver
import yaml

from infratool.secrets import derive
from infratool.secrets.store import SopsStore

STEPS = ["generated", "stored", "delivered-one", "delivered", "verified", "promoted"]


@pytest.fixture
def lab2(lab_factory, monkeypatch):
    from infratool.onboard.scaffold import ensure_operator_repo

    lab = lab_factory(2)
    key = lab.root / "age.key"
    ensure_operator_repo(lab.flake_dir, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    return lab


def values(lab) -> dict[str, str]:
    store = SopsStore(lab.flake_dir / "secrets")
    return (
        {k: str(v.reveal()) for k, v in store.read("sources.yaml").items()}
        if store.exists("sources.yaml")
        else {}
    )


def write_policy(lab, secrets: dict) -> None:
    (lab.flake_dir / "secrets" / "rotation.yaml").write_text(
        yaml.safe_dump({"secrets": secrets}, sort_keys=False)
    )


def test_kill_9_at_every_step_of_a_derived_group_converges(lab2, cli):
    lab = lab2
    same = 'read -r v && [ "$(cat {path})" = "$v" ]'
    write_policy(
        lab,
        {
            "app/password": {
                "file": "secrets/sources.yaml",
                "generator": "password",
                "consumers": [
                    {
                        "host": "snix",
                        "file": {"path": "/var/lib/app/password"},
                        "verify": same.format(path="/var/lib/app/password"),
                    }
                ],
            },
            "app/hash": {
                "file": "secrets/sources.yaml",
                "generator": "derive",
                "from": "app/password",
                "params": {"function": "sha512-crypt"},
                "consumers": [
                    {
                        "host": "slax",
                        "file": {"path": "/var/lib/app/hash"},
                        "verify": same.format(path="/var/lib/app/hash"),
                    }
                ],
            },
        },
    )
    inv = lab.inventory_path
    assert cli("-i", inv, "secrets", "rotate", "--all", "--yes").returncode == 0
    for step in STEPS:
        killed = cli("-i", inv, "secrets", "rotate", "app/password", "--yes", env={"INFRATOOL_FAULT": step})
        assert killed.returncode == -9, f"{step}: {killed.stdout}{killed.stderr}"
        again = cli("-i", inv, "secrets", "rotate", "--due", "--yes")
        assert again.returncode == 0, f"{step}: {again.stdout}{again.stderr}"
        now = values(lab)
        assert not any(k.startswith("_rotation/pending") for k in now), step
        password, hashed = now["app/password"], now["app/hash"]
        assert lab.host("snix").path("/var/lib/app/password").read_text() == password, step
        assert lab.host("slax").path("/var/lib/app/hash").read_text() == hashed, step
        salt = hashed.split("$")[2]
        assert derive.sha512_crypt(password, salt) == hashed, f"{step}: the hash is not of the password"
        status = cli("-i", inv, "--json", "secrets", "status")
        assert status.returncode == 0, f"{step}: {status.stdout}"


def test_kill_9_after_promote_still_revokes_the_previous_lease(lab2, cli):
    lab = lab2
    with vaultserver.serve() as vault:
        write_policy(
            lab,
            {
                "db/app": {
                    "file": "secrets/sources.yaml",
                    "generator": "vault",
                    "params": {"path": "database/creds/app"},
                    "consumers": [{"host": "slax", "file": {"path": "/var/lib/app/db-password"}}],
                }
            },
        )
        env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token}
        inv = lab.inventory_path
        assert cli("-i", inv, "secrets", "rotate", "--all", "--yes", env=env).returncode == 0
        first = values(lab)["_rotation/lease/db/app"]
        killed = cli(
            "-i", inv, "secrets", "rotate", "db/app", "--yes", env={**env, "INFRATOOL_FAULT": "promoted"}
        )
        assert killed.returncode == -9
        mid = values(lab)
        second = mid["_rotation/lease/db/app"]
        assert mid["_rotation/retire/db/app"] == first and vault.lease_valid(first)  # the crash left it live
        again = cli("-i", inv, "secrets", "rotate", "--due", "--yes", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert not vault.lease_valid(first) and vault.lease_valid(second)
        assert "_rotation/retire/db/app" not in values(lab)
        assert cli("-i", inv, "--json", "secrets", "status").returncode == 0
