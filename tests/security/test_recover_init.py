"""Issue 22.4: the recovery mnemonic goes only to a terminal, and a second init replaces the first.

Real CLI processes and the real sops binary over a fleet repo (no host is
contacted by these commands). A pseudo-terminal stands in for the operator's.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from infratool.onboard.scaffold import ensure_operator_repo
from infratool.secrets import recovery
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fleet repo: inventory, secrets/.sops.yaml for an operator key, one sops file."""
    flake = tmp_path / "fleet"
    key = tmp_path / "age.key"
    ensure_operator_repo(flake, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    (flake / "hosts.yaml").write_text("hosts:\n  snix: {address: 10.255.255.1}\n")
    SopsStore(flake / "secrets").write("db.yaml", {"db/password": "value-" + "x" * 12})
    return flake


def sops_config(repo: Path) -> str:
    return (repo / "secrets" / ".sops.yaml").read_text()


def words_of(stdout: str) -> str:
    return " ".join(stdout.split())


def test_words_never_go_to_a_file_or_json_unless_asked(repo: Path, cli) -> None:
    before = sops_config(repo)
    inv = repo / "hosts.yaml"
    piped = cli("-i", inv, "secrets", "recover", "init")
    assert piped.returncode == 3 and "not a terminal" in piped.stderr and "--to-stdout" in piped.stderr
    as_json = cli("-i", inv, "--json", "secrets", "recover", "init", "--to-stdout")
    assert as_json.returncode == 3
    # Under --json stdout carries only the error document: no words.
    assert json.loads(as_json.stdout)["error"]["exit_code"] == 3 and "JSON" in as_json.stdout
    assert piped.stdout == ""
    assert sops_config(repo) == before  # refused before anything changed
    asked = cli("-i", inv, "secrets", "recover", "init", "--to-stdout")
    assert asked.returncode == 0, asked.stderr
    assert len(words_of(asked.stdout).split()) == 24


def test_words_go_to_a_terminal(repo: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infratool", "-i", str(repo / "hosts.yaml"), "secrets", "recover", "init"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(60) == 0, proc.stderr.read().decode() if proc.stderr else ""
    words = words_of(out.decode())
    assert len(words.split()) == 24
    recovery.validate(words)


def test_a_second_init_says_so_and_replaces_the_old_recipient(repo: Path, cli) -> None:
    inv = repo / "hosts.yaml"
    store = SopsStore(repo / "secrets")
    first = cli("-i", inv, "secrets", "recover", "init", "--to-stdout")
    assert first.returncode == 0, first.stderr
    old_words = words_of(first.stdout)
    _, old = recovery.derive_identity(old_words)
    assert old in store.recipients("db.yaml")
    before = sops_config(repo)

    again = cli("-i", inv, "secrets", "recover", "init", "--to-stdout")
    assert again.returncode == 3 and f"a backup recipient already exists ({old})" in again.stderr
    assert "--replace" in again.stderr and again.stdout == "" and sops_config(repo) == before

    replaced = cli("-i", inv, "secrets", "recover", "init", "--to-stdout", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    new_words = words_of(replaced.stdout)
    _, new = recovery.derive_identity(new_words)
    assert f"the old backup recipient {old} was removed" in replaced.stderr
    assert old not in sops_config(repo) and new in sops_config(repo)
    assert old not in store.recipients("db.yaml") and new in store.recipients("db.yaml")
    ok = cli("-i", inv, "secrets", "recover", "check", input=new_words + "\n")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stale = cli("-i", inv, "secrets", "recover", "check", input=old_words + "\n")
    assert stale.returncode == 1 and "FAIL db.yaml" in stale.stdout


def test_in_a_git_fleet_repo_init_refuses_a_dirty_tree_and_commits_without_the_words(repo: Path, cli) -> None:
    def git(*args: str) -> str:
        ident = ["-c", "user.name=Op", "-c", "user.email=op@example.org"]
        return subprocess.run(
            ["git", *ident, *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    (repo / ".gitignore").write_text("secrets/.*.lock\n")
    git("add", "-A")
    git("commit", "-q", "-m", "fleet")
    inv = repo / "hosts.yaml"
    (repo / "secrets" / "notes.txt").write_text("not committed\n")
    before = sops_config(repo)
    dirty = cli("-i", inv, "secrets", "recover", "init", "--to-stdout")
    assert dirty.returncode == 3 and "uncommitted changes" in dirty.stderr and dirty.stdout == ""
    assert sops_config(repo) == before
    (repo / "secrets" / "notes.txt").unlink()

    done = cli("-i", inv, "secrets", "recover", "init", "--to-stdout")
    assert done.returncode == 0, done.stderr
    words = words_of(done.stdout)
    recipient = recovery.derive_identity(Secret(words))[1]
    assert git("log", "-1", "--format=%s") == f"secrets: backup recipient {recipient}"
    assert git("status", "--porcelain") == ""
    history = " ".join(git("log", "-p", "--all").split())
    assert words not in history and " ".join(words.split()[:4]) not in history
