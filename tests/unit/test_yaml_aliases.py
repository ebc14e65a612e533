"""Issue 13.5: YAML alias bombs are refused by every loader of user input, fast, at file:line.

A 437-byte playbook whose ``description:`` nested aliases nine deep ran 45 s
and died with a MemoryError traceback. Each case below puts the bomb where a
user file can hold it and expects an InputError naming the file and the line
of the first alias, in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT

from infratool import inventory, playbook
from infratool.errors import InputError
from infratool.onboard import scaffold, sopsrules
from infratool.rotation import policy, state
from infratool.secrets.store import SopsStore


def bomb(key: str, indent: str = "") -> str:
    """Nine levels of nine aliases under ``key``: 9**9 strings once expanded."""
    lines = [f'{indent}_a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    prev = "a"
    for level in "bcdefgh":
        lines.append(f"{indent}_{level}: &{level} [{', '.join(['*' + prev] * 9)}]")
        prev = level
    lines.append(f"{indent}{key}: [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def refused(load, path: Path, line: int) -> None:
    # Refused at the first alias, while composing: nothing was built, let alone expanded
    # (an expanded bomb would not fit in memory). No timing: a loaded CI machine is slow.
    with pytest.raises(InputError) as exc:
        load()
    assert exc.value.file is not None and exc.value.file.endswith(path.name)
    assert exc.value.line == line and "aliases" in exc.value.message


@pytest.fixture
def inv() -> inventory.Inventory:
    return inventory.load(ROOT / "hosts.yaml")


def test_playbook_description_and_task_name(tmp_path: Path, inv) -> None:
    pb = tmp_path / "pb.yaml"
    pb.write_text("name: bomb\n" + bomb("description"))
    refused(lambda: playbook.load(pb, inv), pb, 3)
    pb.write_text("tasks:\n  - task: files.content\n" + bomb("name", "    "))
    refused(lambda: playbook.load(pb, inv), pb, 4)


def test_inventory_port(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  snix:\n    address: 10.0.0.1\n" + bomb("port", "    "))
    refused(lambda: inventory.load(path), path, 5)


def test_policy_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "rotation.yaml"
    path.write_text(
        "secrets:\n  db/pw:\n    file: secrets/db.yaml\n    generator: password\n    consumers:\n"
        "      - host: snix\n        file:\n          path: /x\n" + bomb("mode", "          ")
    )
    refused(lambda: policy.load_policy(path, root=tmp_path), path, 10)


def test_rotation_state(tmp_path: Path) -> None:
    path = state.state_path(tmp_path)
    path.write_text("version: 1\n" + bomb("secrets"))
    refused(lambda: state.load(path), path, 3)


def test_sops_config_and_sops_metadata(tmp_path: Path) -> None:
    config = tmp_path / ".sops.yaml"
    config.write_text("creation_rules:\n  - path_regex: .*\n" + bomb("age", "    "))
    before = config.read_text()
    refused(lambda: scaffold.add_sops_recipient(config, "age1xyz"), config, 4)
    refused(lambda: sopsrules.parse_rules(config.read_text(), config), config, 4)
    assert config.read_text() == before
    # A committed "sops file" whose metadata is a bomb: read only for its recipients.
    secrets = tmp_path / "db.yaml"
    secrets.write_text("sops:\n" + bomb("age", "  "))
    refused(lambda: SopsStore(tmp_path).recipients(secrets), secrets, 3)
    assert sopsrules.sops_files(tmp_path) == []


def test_anchors_without_aliases_and_plain_files_still_load(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  snix: &s {address: 10.0.0.1}\n")
    assert inventory.load(path)["snix"].address == "10.0.0.1"
