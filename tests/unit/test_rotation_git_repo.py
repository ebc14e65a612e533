"""rotation/git.py against real git repositories in a temp dir (no lab: the rotation is simulated by
writing the files a rotation writes). The end-to-end behaviour is in tests/e2e/test_rotation_git.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from infratool.errors import InputError
from infratool.rotation.git import FleetGit, GitOptions

IDENTITY = ["-c", "user.name=T", "-c", "user.email=t@example.org"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def state(path: Path, **generations: int) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "secrets": {
                    n.replace("__", "/"): {"generation": g, "status": "ok"} for n, g in generations.items()
                },
            }
        )
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    repo = tmp_path / "fleet"
    (repo / "secrets").mkdir(parents=True)
    (repo / "secrets" / ".sops.yaml").write_text("creation_rules: []\n")
    (repo / "secrets" / "a.yaml").write_text("ciphertext: 1\n")
    state(repo / "secrets" / ".rotation-state.yaml", db__app=1)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def session(repo: Path, **options) -> FleetGit:
    paths = [repo / "secrets" / "a.yaml", repo / "secrets" / ".rotation-state.yaml"]
    found = FleetGit.open(repo, paths, GitOptions(**options))
    assert found is not None
    return found


def test_lock_files_are_not_changes_but_an_untracked_file_is(fleet):
    (fleet / "secrets" / ".a.yaml.lock").write_text("123\n")
    session(fleet).preflight()
    (fleet / "secrets" / "new.yaml").write_text("x: 1\n")
    with pytest.raises(InputError, match=r"uncommitted changes \(secrets/new.yaml\)"):
        session(fleet).preflight()


def test_commit_names_generations_and_only_the_rotation_files(fleet):
    repo = session(fleet, author="Bot <bot@example.org>")
    repo.preflight()
    repo.start()
    assert repo.journal.is_file()
    (fleet / "secrets" / "a.yaml").write_text("ciphertext: 2\n")
    state(fleet / "secrets" / ".rotation-state.yaml", db__app=2, web__token=1)
    (fleet / "README").write_text("someone's work in progress\n")
    out = repo.finish()
    assert out.error is None and out.commit
    assert out.subject == "secrets: rotate db/app (generation 2), web/token (generation 1)"
    assert git(fleet, "log", "-1", "--format=%an <%ae>") == "Bot <bot@example.org>"
    assert git(fleet, "show", "--name-only", "--format=", "HEAD").split() == [
        "secrets/.rotation-state.yaml",
        "secrets/a.yaml",
    ]
    assert "db/app: generation 1 -> 2" in git(fleet, "log", "-1", "--format=%b")
    assert not repo.journal.exists() and "README" in git(fleet, "status", "--porcelain")


def test_many_secrets_get_a_short_subject_and_nothing_changed_commits_nothing(fleet):
    repo = session(fleet)
    repo.start()
    names = {f"service{i}__password": 2 for i in range(8)}
    state(fleet / "secrets" / ".rotation-state.yaml", **names)
    out = repo.finish()
    assert out.subject == "secrets: rotate 8 secrets" and len(out.subject) <= 72
    head = git(fleet, "rev-parse", "HEAD")
    repo.start()
    assert repo.finish().commit is None and git(fleet, "rev-parse", "HEAD") == head


def test_not_the_fleets_repo_or_not_a_repo(tmp_path, fleet):
    # A dotfiles repo around $HOME that ignores everything: not the fleet's repo.
    home = tmp_path / "home"
    (home / "fleet" / "secrets").mkdir(parents=True)
    (home / ".gitignore").write_text("*\n")
    git(home, "init", "-q")
    assert FleetGit.open(home / "fleet", [], GitOptions()) is None
    with pytest.raises(InputError, match="not a git repository"):
        FleetGit.open(home / "fleet", [], GitOptions(push=True))
    assert FleetGit.open(fleet, [], GitOptions(commit=False)) is None


def test_push_needs_a_branch_with_an_upstream(fleet):
    with pytest.raises(InputError, match="has no upstream; set one"):
        session(fleet, push=True).preflight()
    git(fleet, "checkout", "-q", "--detach")
    with pytest.raises(InputError, match="HEAD is detached"):
        session(fleet, push=True).preflight()


def test_a_repo_git_refuses_is_bad_input_not_silently_no_git(fleet):
    """Owned by another user (a timer running as root on an operator's checkout): git refuses it.
    Treating that as "not a git repo" would stop committing rotations without a word."""
    for path in [fleet, *fleet.rglob("*")]:
        os.lchown(path, 65534, 65534)
    with pytest.raises(InputError, match=r"safe\.directory"):
        FleetGit.open(fleet, [], GitOptions())


def test_state_version_2_and_other_files_under_secrets_are_committed(fleet):
    """The one-engine state (``rotations:`` keyed kind/name) and a rotation kind's own sops file."""
    repo = session(fleet)
    repo.start()
    (fleet / "secrets" / ".rotation-state.yaml").write_text(
        yaml.safe_dump(
            {
                "version": 2,
                "rotations": {
                    "secret/db/app": {"generation": 2, "status": "ok"},
                    "cache-key/main": {"generation": 1, "status": "ok"},
                },
            },
            sort_keys=False,
        )
    )
    (fleet / "secrets" / "binary-cache.yaml").write_text("ciphertext: cache\n")
    out = repo.finish()
    assert out.subject == "secrets: rotate db/app (generation 2), cache-key/main (generation 1)"
    assert "secrets/binary-cache.yaml" in git(fleet, "show", "--name-only", "--format=", "HEAD").split()
