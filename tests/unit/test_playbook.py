"""Playbook validation: everything checked before any connection, with file:line."""

from __future__ import annotations

import pytest
from helpers import ROOT

from infratool import inventory, playbook
from infratool.errors import InputError

INV = "hosts:\n  a: {address: 10.0.0.1, tags: [web]}\n  b: {address: 10.0.0.2}\n"


@pytest.fixture
def inv(tmp_path):
    p = tmp_path / "hosts.yaml"
    p.write_text(INV)
    return inventory.load(p)


def write(tmp_path, text, name="pb.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_playbooks_validate():
    inv = inventory.load(ROOT / "hosts.yaml")
    for pb in sorted((ROOT / "playbooks").glob("*.yaml")):
        book = playbook.load(pb, inv)
        assert book.invocations, pb


def test_include_and_selection(tmp_path, inv):
    write(tmp_path, "tasks:\n  - task: files.absent\n    with: {path: /tmp/x}\n", "inner.yaml")
    book = playbook.load(write(tmp_path, "hosts: tag:web\ntasks:\n  - include: inner.yaml\n"), inv)
    assert [h.name for h in book.invocations[0].hosts(inv, None)] == ["a"]
    assert book.invocations[0].hosts(inv, "b") == []


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("tasks:\n  - task: nope.nothing\n", 2, "unknown task 'nope.nothing'"),
        ("tasks:\n  - task: files.absent\n    with: {paht: /x}\n", 3, "unknown parameter 'paht'"),
        ("tasks:\n  - task: files.absent\n    with: {}\n", 2, "missing required parameter 'path'"),
        (
            "tasks:\n  - task: files.content\n    with:\n      path: /x\n      content: 5\n",
            5,
            "must be a string, got an integer",
        ),
        ("tasks:\n  - task: files.content\n    with: {path: relative, content: x}\n", 3, "absolute path"),
        ("tasks:\n  - task: files.content\n    with: {path: /x, content: x, mode: '999'}\n", 3, "octal"),
        ("tasks:\n  - task: nix.settings\n    with: {settings: {Bad Key: 1}}\n", 3, "invalid setting name"),
        ("tasks:\n  - task: files.absent\n  with: {path: /x}\n", 3, "YAML syntax error"),
        ("hosts: nosuchhost\ntasks:\n  - task: files.absent\n    with: {path: /x}\n", 1, "matches no host"),
        ("tasks: []\n", 1, "non-empty list"),
        ("name: x\ntask: []\n", 2, "unknown key 'task'"),
        ("tasks:\n  - include: missing.yaml\n", 2, "not found"),
    ],
)
def test_malformed_playbook(tmp_path, inv, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        playbook.load(path, inv)
    assert message in str(info.value)
    assert (info.value.file, info.value.line) == (str(path), line)


def test_include_cycle(tmp_path, inv):
    write(tmp_path, "tasks:\n  - include: b.yaml\n", "a.yaml")
    write(tmp_path, "tasks:\n  - include: a.yaml\n", "b.yaml")
    with pytest.raises(InputError, match="include cycle"):
        playbook.load(tmp_path / "a.yaml", inv)


def test_an_empty_command_gets_a_label_not_a_crash(tmp_path, inv):
    """Found by the fuzzer in CI: ``command: ''`` raised IndexError while labelling the task."""
    book = tmp_path / "empty.yaml"
    book.write_text("tasks:\n- task: command\n  with:\n    command: ''\n    unless: ''\n")
    try:
        loaded = playbook.load(book, inv)
    except InputError as exc:  # refusing it as bad input is fine too
        assert exc.file
    else:
        assert [i.label for i in loaded.invocations] == ["command "]
