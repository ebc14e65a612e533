"""Inventory parsing, validation (file:line) and --limit selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT

from infratool import inventory
from infratool.errors import InputError

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
    # OpenSSH: a plain address pins port 22 only; port 2222 needs [addr]:2222 (issue 13.13).
    assert inv["brix"].host_keys == ("ssh-ed25519 AAAAPORT",)
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


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{}"


def _keys(tmp_path: Path, known_hosts: str, hosts: str) -> dict[str, tuple[str, ...]]:
    write(tmp_path, known_hosts, "known_hosts")
    text = "defaults: {known_hosts: known_hosts}\nhosts:\n" + hosts
    return {h.name: h.host_keys for h in inventory.load(write(tmp_path, text))}


def test_known_hosts_markers_and_patterns_as_openssh_reads_them(tmp_path):
    """Issue 13.13: @revoked revokes (the inline pin too), @cert-authority pins nothing, globs and ! work."""
    kh = "\n".join(
        [
            f"10.0.0.1,10.0.0.2 {KEY.format('A')}",
            f"@revoked * {KEY.format('A')}",  # revoked everywhere, even where pinned
            f"10.0.0.1 {KEY.format('B')}",
            f"@cert-authority *.home.arpa {KEY.format('C')}",
            f"10.0.9.* {KEY.format('D')}",
            f"10.0.9.*,!10.0.9.7 {KEY.format('E')}",
            f"[10.0.9.5]:2222 {KEY.format('F')}",
        ]
    )
    hosts = (
        "  one: {address: 10.0.0.1}\n"
        f"  two: {{address: 10.0.0.2, host_key: '{KEY.format('A')}'}}\n"
        "  ca: {address: snix.home.arpa}\n"
        "  five: {address: 10.0.9.5}\n"
        "  seven: {address: 10.0.9.7}\n"
        "  port: {address: 10.0.9.5, port: 2222}\n"
    )
    keys = _keys(tmp_path, kh, hosts)
    assert keys["one"] == (KEY.format("B"),)
    assert keys["two"] == ()  # its only pins are revoked: the connection is refused (exit 4)
    assert keys["ca"] == ()  # a CA key is not a host key
    assert keys["five"] == (KEY.format("D"), KEY.format("E"))
    assert keys["seven"] == (KEY.format("D"),)
    assert keys["port"] == (KEY.format("F"),)


def test_hashed_known_hosts_match_what_ssh_keygen_hashed(tmp_path):
    """Entries hashed by the real `ssh-keygen -H` pin the same hosts as before hashing."""
    import shutil
    import subprocess

    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen not installed")
    plain = f"10.0.0.1 {KEY.format('A')}\n[10.0.0.2]:2222 {KEY.format('B')}\n"
    path = write(tmp_path, plain, "known_hosts")
    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
    hashed = path.read_text()
    assert "10.0.0" not in hashed and hashed.count("|1|") == 2
    hosts = (
        "  a: {address: 10.0.0.1}\n  a2222: {address: 10.0.0.1, port: 2222}\n"
        "  b: {address: 10.0.0.2}\n  b2222: {address: 10.0.0.2, port: 2222}\n"
    )
    keys = _keys(tmp_path, hashed, hosts)
    assert keys == {"a": (KEY.format("A"),), "a2222": (), "b": (), "b2222": (KEY.format("B"),)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("|1|nobase64!|x ssh-ed25519 AAAA", "base64"),
        ("|2|abc|def ssh-ed25519 AAAA", "|1|salt|hash"),
        ("@trusted 10.0.0.1 ssh-ed25519 AAAA", "unknown marker"),
        ("@revoked ssh-ed25519 AAAA", "expected"),
    ],
)
def test_malformed_known_hosts_lines_name_file_and_line(tmp_path, line, message):
    with pytest.raises(InputError) as exc:
        _keys(tmp_path, f"# pins\n{line}\n", "  a: {address: 10.0.0.1}\n")
    assert exc.value.file == str(tmp_path / "known_hosts") and exc.value.line == 2
    assert message in exc.value.message
