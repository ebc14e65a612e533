"""hosts.yaml edits: a host in or out, every other byte (comments, order, style) kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from infratool import inventory
from infratool.errors import InputError
from infratool.onboard.hostsfile import add_host_text, remove_host_text, replace_host_text
from infratool.onboard.repo import HOSTS_YAML

PATH = Path("hosts.yaml")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpMTwI/UbrUiCg4K74ON6NM1SQUQAX7YLC6KbNCQlmn"
SCAFFOLD = HOSTS_YAML.format(ssh_key_setting="ssh_key: ~/.ssh/id_ed25519 ", os_setting="os: nixos ")

COMMENTED = """\
# The fleet. Keep this comment.
defaults: {user: root}   # flow defaults
hosts:
  # workstation, also the builder
  snix:
    address: snix.home.arpa   # on the LAN
    tags: [builder]
    # deeper comment inside snix

  # the laptop
  slax:
    address: slax.home.arpa
    host_key: "ssh-ed25519 AAAA"

  brix: {address: brix.home.arpa}  # a flow entry
# trailing top-level comment
"""


def fields(address: str = "10.0.0.5", **extra) -> dict:
    return {"address": address, **extra, "host_key": KEY}


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(line in it for line in small)


def test_add_to_the_scaffold_then_remove_gives_it_back():
    added = add_host_text(SCAFFOLD, PATH, "web1", fields(os="linux", tags=["server", "db"]))
    assert is_subsequence(SCAFFOLD.splitlines(), added.splitlines())
    assert added.endswith(
        f'  web1:\n    address: 10.0.0.5\n    os: linux\n    tags: [server, db]\n    host_key: "{KEY}"\n'
    )
    inv = inventory.parse(yaml.safe_load(added), PATH)
    assert inv["web1"].host_keys == (KEY,) and inv["web1"].tags == ("server", "db")
    assert remove_host_text(added, PATH, "web1") == SCAFFOLD


def test_comments_and_style_survive_add_and_remove():
    added = add_host_text(COMMENTED, PATH, "nixtv-player", fields())
    assert is_subsequence(COMMENTED.splitlines(), added.splitlines())
    # Blank lines separate the hosts in this file, so the new one gets one too;
    # it goes after the last host, before the trailing top-level comment.
    assert "  brix: {address: brix.home.arpa}  # a flow entry\n\n  nixtv-player:\n" in added
    assert added.endswith(f'host_key: "{KEY}"\n# trailing top-level comment\n')

    without_snix = remove_host_text(added, PATH, "snix")
    for gone in ("  snix:", "address: snix.home.arpa   # on the LAN", "# deeper comment inside snix"):
        assert gone not in without_snix
    # Comments at host level or above are kept, even the one that was above snix.
    for kept in (
        "# The fleet. Keep this comment.",
        "  # workstation, also the builder",
        "  # the laptop",
        "# trailing top-level comment",
        "defaults: {user: root}   # flow defaults",
    ):
        assert kept in without_snix.splitlines()
    assert list(yaml.safe_load(without_snix)["hosts"]) == ["slax", "brix", "nixtv-player"]

    without_brix = remove_host_text(without_snix, PATH, "brix")
    assert "brix" not in without_brix and "\n\n\n" not in without_brix
    assert list(yaml.safe_load(without_brix)["hosts"]) == ["slax", "nixtv-player"]


def test_lab_style_flow_entries_stay_flow():
    lab = (
        "# written by `infratool lab up`\n"
        "defaults: {user: root, port: 22, ssh_key: /tmp/lab/id_ed25519, flake: /tmp/lab/flake}\n"
        "hosts:\n"
        '  snix: {address: 127.0.0.10, os: linux, tags: [builder], host_key: "ssh-ed25519 AAAA"}\n'
        '  slax: {address: 127.0.0.11, os: linux, tags: [laptop], host_key: "ssh-ed25519 BBBB"}\n'
    )
    added = add_host_text(lab, PATH, "brix", fields("127.0.0.12"))
    assert added.startswith(lab)
    removed = remove_host_text(added, PATH, "snix")
    assert removed == lab.replace(lab.splitlines()[3] + "\n", "") + added[len(lab) :]


@pytest.mark.parametrize(
    "hosts_line",
    ["hosts:\n", "hosts: ~\n", "hosts: {}\n", "hosts: {}  # none yet\n", "hosts: null\n", "hosts:"],
)
def test_empty_hosts_in_any_spelling(hosts_line):
    text = f"defaults: {{user: root}}\n{hosts_line}"
    added = add_host_text(text, PATH, "web1", fields())
    assert yaml.safe_load(added)["hosts"] == {"web1": {"address": "10.0.0.5", "host_key": KEY}}
    assert added.startswith("defaults: {user: root}\nhosts:")
    if "#" in hosts_line:
        assert "hosts:  # none yet\n" in added


def test_hosts_before_other_keys_and_four_space_indent():
    text = "hosts:\n    a:\n        address: a.example\n# about defaults\ndefaults:\n    user: root\n"
    added = add_host_text(text, PATH, "b", fields("b.example"))
    assert added.startswith(
        "hosts:\n    a:\n        address: a.example\n    b:\n        address: b.example\n"
    )
    assert added.endswith("# about defaults\ndefaults:\n    user: root\n")
    assert remove_host_text(added, PATH, "b") == text


def test_flow_hosts_mapping_goes_through_ruamel():
    text = "# keep\nhosts: {a: {address: a.example}}  # flow\n"
    added = add_host_text(text, PATH, "b", fields("b.example"))
    data = yaml.safe_load(added)["hosts"]
    assert list(data) == ["a", "b"] and data["b"]["host_key"] == KEY
    assert added.startswith("# keep\n")
    assert yaml.safe_load(remove_host_text(added, PATH, "a"))["hosts"] == {"b": data["b"]}


def test_multiline_values_are_removed_whole():
    text = (
        "hosts:\n"
        "  a:\n"
        "    address: a.example\n"
        "    deploy_command: >-\n"
        "      nixos-rebuild switch\n"
        "      --flake .#a\n"
        "\n"
        "  b:\n"
        "    address: b.example\n"
    )
    assert remove_host_text(text, PATH, "a") == "hosts:\n\n  b:\n    address: b.example\n"
    assert remove_host_text(text, PATH, "b") == text.replace("\n  b:\n    address: b.example\n", "")


def test_no_trailing_newline():
    text = "hosts:\n  a:\n    address: a.example"
    added = add_host_text(text, PATH, "b", fields("b.example"))
    assert added.startswith(text + "\n  b:\n")


def test_replace_keeps_position_and_neighbours():
    added = add_host_text(COMMENTED, PATH, "x", fields())
    replaced = replace_host_text(added, PATH, "snix", fields("192.0.2.1", tags=["builder"]))
    hosts = yaml.safe_load(replaced)["hosts"]
    assert list(hosts) == ["snix", "slax", "brix", "x"]
    assert hosts["snix"] == {"address": "192.0.2.1", "tags": ["builder"], "host_key": KEY}
    assert "  # workstation, also the builder\n  snix:\n    address: 192.0.2.1\n" in replaced
    assert "  # the laptop" in replaced


def test_quoting_of_awkward_values():
    added = add_host_text(SCAFFOLD, PATH, "w", fields("10.0.0.1", tags=["yes", "01", "a b"], user="null"))
    host = yaml.safe_load(added)["hosts"]["w"]
    assert host["tags"] == ["yes", "01", "a b"] and host["user"] == "null"


def test_broken_yaml_is_bad_input():
    with pytest.raises(InputError, match="YAML"):
        add_host_text("hosts: [\n", PATH, "a", fields())
    with pytest.raises(InputError, match="no 'hosts:'"):
        add_host_text("defaults: {}\n", PATH, "a", fields())


NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(NAMES, min_size=1, max_size=6, unique=True),
    tags=st.lists(st.sampled_from(["server", "laptop", "yes", "on", "1.0", "tag:x"]), max_size=3),
    data=st.data(),
)
def test_adding_then_removing_in_any_order_restores_the_file(names, tags, data):
    text = COMMENTED
    for name in names:
        text = add_host_text(text, PATH, f"n-{name}", fields(f"{name}.example", tags=tags))
        assert is_subsequence(COMMENTED.splitlines(), text.splitlines())
    hosts = yaml.safe_load(text)["hosts"]
    assert list(hosts)[3:] == [f"n-{n}" for n in names]
    assert all(hosts[f"n-{n}"].get("tags", []) == tags for n in names)
    for name in data.draw(st.permutations(names)):
        text = remove_host_text(text, PATH, f"n-{name}")
    assert text == COMMENTED
