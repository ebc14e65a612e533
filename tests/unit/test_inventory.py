"""Inventory parsing, validation (file:line) and --limit selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from infratool import inventory
from infratool.errors import InputError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
defaults:
  user: root
  ssh_key: ~/.ssh/id_ed25519
  known_hosts: known_hosts
hosts:
  snix: {address: 10.0.0.1, os: nixos, tags: [workstation, builder, cache]}
  slax: {address: 10.0.0.2, tags: [laptop], host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0 comment"}
  brix: {address: 10.0.0.3, tags: [server], port: 2222}
  nixtv-player: {address: 10.0.0.4, tags: [media]}
"""


def write(tmp_path: Path, text: str, name: str = "hosts.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_real_fleet_file_has_the_four_hosts():
    inv = inventory.load(ROOT / "hosts.yaml")
    assert list(inv.hosts) == ["snix", "slax", "brix", "nixtv-player"]
    assert all(h.os == "nixos" for h in inv)
    assert inv["snix"].tags == ("workstation", "builder", "cache")


def test_defaults_apply_and_known_hosts_pin(tmp_path):
    write(tmp_path, "10.0.0.3 ssh-ed25519 AAAAKEY3\n[10.0.0.3]:2222 ssh-ed25519 AAAAPORT\n", "known_hosts")
    inv = inventory.load(write(tmp_path, GOOD))
    assert inv["slax"].host_keys == ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0",)
    assert inv["brix"].host_keys == ("ssh-ed25519 AAAAKEY3", "ssh-ed25519 AAAAPORT")
    assert inv["brix"].port == 2222
    assert inv["snix"].user == "root" and inv["snix"].is_nixos
    assert inv["slax"].os == "linux"
    assert str(inv["snix"].ssh_key).endswith(".ssh/id_ed25519") and "~" not in str(inv["snix"].ssh_key)
    assert inv["snix"].flake == tmp_path / "."


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, ["snix", "slax", "brix", "nixtv-player"]),
        ("snix", ["snix"]),
        ("tag:builder", ["snix"]),
        ("s*", ["snix", "slax"]),
        ("snix,brix", ["snix", "brix"]),
        ("!slax", ["snix", "brix", "nixtv-player"]),
        ("all,!tag:media", ["snix", "slax", "brix"]),
        ("s*,!snix", ["slax"]),
        (["tag:laptop", "tag:server"], ["slax", "brix"]),
    ],
)
def test_limit_selection(tmp_path, limit, expected):
    inv = inventory.load(write(tmp_path, GOOD))
    assert [h.name for h in inv.select(limit)] == expected


def test_limit_matching_nothing_is_an_error(tmp_path):
    inv = inventory.load(write(tmp_path, GOOD))
    with pytest.raises(InputError, match="matches no host"):
        inv.select("tag:nope")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("hosts:\n  a: {address: x}\n  a: {address: y}\n", 3, "duplicate key"),
        ("hosts:\n  a:\n    addres: x\n", 3, "unknown key 'addres'"),
        ("hosts:\n  a: {os: nixos}\n", 2, "no 'address'"),
        ("hosts:\n  a:\n    address: x\n    os: windows\n", 4, "os must be one of"),
        ("hosts:\n  a:\n    address: x\n    port: 0\n", 4, "port must be"),
        ("hosts:\n  a:\n    address: 'x; rm -rf /'\n", 3, "invalid address"),
        ("hosts:\n  'bad name': {address: x}\n", 2, "invalid host name"),
        ("hosts: [a, b]\n", 1, "non-empty mapping"),
        ("defaults: {colour: red}\nhosts:\n  a: {address: x}\n", 1, "unknown key 'colour'"),
        ("hosts:\n  a: {address: x\n", 3, "YAML syntax error"),
    ],
)
def test_malformed_inventory_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        inventory.load(path)
    assert message in str(info.value)
    assert info.value.file == str(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_env_var_picks_inventory(monkeypatch, tmp_path):
    monkeypatch.setenv("INFRATOOL_INVENTORY", str(tmp_path / "x.yaml"))
    assert inventory.resolve_path(None) == tmp_path / "x.yaml"
    assert inventory.resolve_path("other.yaml") == Path("other.yaml")
