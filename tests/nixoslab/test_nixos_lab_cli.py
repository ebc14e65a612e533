"""`infratool lab up --nixos [HOST,...]`: what the option passes to the lab (no lab started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from infratool_lab import LabHost

from infratool.cli import main


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple]:
    import infratool_lab.fleet as fleet
    import infratool_lab.services as services

    seen: list[tuple] = []

    class FakeLab:
        subnet = "127.0.0"
        inventory_path = tmp_path / "hosts.yaml"

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def up(self, count: int | None, nixos: object = None) -> list[LabHost]:
            seen.append((count, nixos))
            return [LabHost("snix", "127.0.0.10", tmp_path, nixos=bool(nixos))]

    monkeypatch.setattr(fleet, "Lab", FakeLab)
    monkeypatch.setattr(services, "prepare_fleet", lambda lab: tmp_path / "age.key")
    return seen


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], (None, None)),
        (["--nixos"], (None, True)),
        (["--nixos", "--hosts", "2"], (2, True)),
        (["--nixos", "snix,slax"], (None, ["snix", "slax"])),
    ],
)
def test_nixos_option(calls: list[tuple], args: list[str], expected: tuple) -> None:
    result = CliRunner().invoke(main, ["lab", "up", *args])
    assert result.exit_code == 0, result.output
    assert calls == [expected]


def test_nixos_option_without_names_is_bad_input(calls: list[tuple]) -> None:
    result = CliRunner().invoke(main, ["lab", "up", "--nixos", ","])
    assert result.exit_code == 3
    assert "--nixos takes host names" in result.output
    assert calls == []


def test_json_says_which_hosts_are_nixos(calls: list[tuple]) -> None:
    result = CliRunner().invoke(main, ["--json", "lab", "up", "--nixos"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hosts"] == [{"name": "snix", "address": "127.0.0.10", "os": "nixos"}]
