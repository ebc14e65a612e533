"""The generated sops-nix module of a NixOS consumer host, and the planner's view of a written value."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import nix_eval, nix_parse

from infratool.errors import InputError
from infratool.rotation import sopsnix
from infratool.rotation.policy import parse_policy
from infratool.rotation.secret_nixos_plan import effective_held, written
from infratool.secrets.secret import Secret

HOSTS = {"slax", "brix"}

POLICY = {
    "secrets": {
        "tokend/token": {
            "file": "secrets/lab.yaml",
            "generator": "hex",
            "consumers": [
                {
                    "host": "slax",
                    "file": {
                        "path": "/var/lib/tokend/token",
                        "mode": "0440",
                        "owner": "nobody",
                        "group": "nogroup",
                    },
                    "units": ["tokend.service", "tokend-proxy.service"],
                },
                {"host": "brix", "file": {"path": "/var/lib/app/token"}},
            ],
        },
        "postgres/app": {
            "file": "secrets/db.yaml",
            "generator": "password",
            "consumers": [
                {
                    "host": "slax",
                    "command": {"run": "psql -f -", "stdin": "ALTER ROLE app PASSWORD '{value}';"},
                    "units": "postgresql.service",
                }
            ],
        },
        "never/rotated": {
            "file": "secrets/lab.yaml",
            "generator": "hex",
            "consumers": [{"host": "slax", "file": {"path": "/run/x"}}],
        },
    }
}


def policy(tmp_path: Path, data: dict = POLICY):
    return parse_policy(data, tmp_path / "rotation.yaml", HOSTS, root=tmp_path)


def test_the_module_names_keys_paths_and_units_only_for_keys_the_sops_files_hold(tmp_path: Path) -> None:
    pol = policy(tmp_path)
    items = sopsnix.entries(tmp_path, "slax", list(pol.secrets.values()))
    present = {
        str(tmp_path / "secrets/lab.yaml"): {"tokend/token"},
        str(tmp_path / "secrets/db.yaml"): {"postgres/app"},
    }
    text = sopsnix.module_text(items, present)
    path = sopsnix.module_path(tmp_path, "slax")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    nix_parse(path)
    secrets = f"(import {path} {{ }}).sops.secrets"
    # A secret never rotated has no key in its sops file yet: no entry (it would fail activation).
    assert nix_eval(f"builtins.attrNames {secrets}") == ["postgres/app", "tokend/token"]
    token = nix_eval(
        f'let s = {secrets}."tokend/token"; in {{ inherit (s) key path mode owner group restartUnits; '
        "file = toString s.sopsFile; }"
    )
    assert token == {
        "key": "tokend/token",
        "path": "/var/lib/tokend/token",
        "mode": "0440",
        "owner": "nobody",
        "group": "nogroup",
        "restartUnits": ["tokend.service", "tokend-proxy.service"],
        "file": str(tmp_path / "secrets/lab.yaml"),
    }
    # The command consumer: a oneshot unit, restarted (so re-run) when the value changes.
    pg = nix_eval(f'{secrets}."postgres/app".restartUnits')
    assert pg == ["postgresql.service", "infratool-secret-postgres-app.service"]
    unit = nix_eval(f'(import {path} {{ }}).systemd.services."infratool-secret-postgres-app".serviceConfig')
    assert unit == {"Type": "oneshot", "RemainAfterExit": True}
    # brix is not in slax's module, and nothing is planned for a host without consumers.
    assert "/var/lib/app/token" not in text
    assert sopsnix.entries(tmp_path, "snix", list(pol.secrets.values())) == []


def test_the_oneshot_script_feeds_the_template_with_the_value_read_on_the_host(tmp_path: Path) -> None:
    value = "it's a $(dangerous) `value` with 'quotes' and \\ backslash"
    secret = tmp_path / "secret"
    secret.write_text(value)
    script = sopsnix._script("cat", "ALTER ROLE app PASSWORD '{value}';", str(secret))
    assert value not in script  # the script names the path; the value is read when it runs
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == f"ALTER ROLE app PASSWORD '{value}';\n"


def test_a_public_part_on_a_nixos_host_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = {
        "secrets": {
            "builders/slax": {
                "file": "secrets/b.yaml",
                "generator": "ssh-ed25519",
                "consumers": [{"host": "slax", "part": "public", "file": {"path": "/etc/x"}}],
            }
        }
    }
    pol = policy(tmp_path, data)
    with pytest.raises(InputError, match="part 'public' cannot be delivered by sops-nix"):
        sopsnix.entries(tmp_path, "slax", list(pol.secrets.values()))


@pytest.mark.parametrize("units", [["tokend"], ["a b.service"], [3], ['x";.service']])
def test_units_must_be_unit_names(tmp_path: Path, units: list) -> None:
    data = {
        "secrets": {
            "t": {
                "file": "secrets/t.yaml",
                "generator": "hex",
                "consumers": [{"host": "slax", "file": {"path": "/x"}, "units": units}],
            }
        }
    }
    with pytest.raises(InputError, match="units must be a unit name"):
        policy(tmp_path, data)


def test_a_value_already_written_is_not_taken_for_the_current_one() -> None:
    # Long values: a Secret registers with the process-wide redactor, and a short word
    # would be masked in whatever other tests of this process render.
    new, old = "written-check-new-7c1f0e9a2b", "written-check-old-3d8e5b6f41"
    held = {
        "t": Secret(new),
        "_rotation/pending/t": Secret(new),
        "_rotation/previous/t": Secret(old),
    }
    assert written(held, "t")
    pol_spec = type("S", (), {"key": "t"})()
    assert effective_held(held, [pol_spec])["t"].reveal() == old  # type: ignore[list-item]
    # Before the write: the current value is the current value.
    fresh = {"t": Secret(old), "_rotation/pending/t": Secret(new)}
    assert not written(fresh, "t")
    assert effective_held(fresh, [pol_spec])["t"].reveal() == old  # type: ignore[list-item]
