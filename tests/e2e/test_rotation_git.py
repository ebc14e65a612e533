"""Rotations land in git (issue 15 §2): real git, a real bare upstream on the local filesystem.

The lab's fleet repo becomes a git repository whose ``origin`` is a bare
repository beside it; a second clone plays the colleague who pushes first.
Every rotation is the real one (PostgreSQL on brix, tokend on slax).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from infratool_lab import services

from infratool.secrets.store import SopsStore

IDENTITY = ["-c", "user.name=Test Operator", "-c", "user.email=operator@example.org"]


def git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout.strip()


@pytest.fixture
def repo(fleet, tmp_path):
    """The lab fleet repo as a git work tree on ``main``, pushed to a bare ``origin``."""
    return make_repo(fleet, tmp_path)


def make_repo(fleet, tmp_path):
    """:func:`repo` for other test modules (a fixture cannot be imported and called)."""
    services.provision(fleet)
    flake = fleet.flake_dir
    policy = flake / "secrets" / "rotation.yaml"
    data = yaml.safe_load(policy.read_text())
    data["git"] = {"author": "Rotation Bot <rotation@example.org>"}
    policy.write_text(yaml.safe_dump(data, sort_keys=False))
    upstream = tmp_path / "upstream.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(upstream))
    git(flake, "init", "-q", "-b", "main")
    (flake / ".gitignore").write_text("secrets/.*.lock\n")
    git(flake, "add", "-A")
    git(flake, "commit", "-q", "-m", "fleet repo")
    git(flake, "remote", "add", "origin", str(upstream))
    git(flake, "push", "-q", "-u", "origin", "main")
    fleet.upstream = upstream
    return fleet


def rotate(cli, lab, *args, env=None):
    return cli("-i", lab.inventory_path, "secrets", "rotate", *args, env=env)


def values(lab) -> dict[str, str]:
    store = SopsStore(lab.flake_dir / "secrets")
    return {k: str(v.reveal()) for k, v in store.read("lab.yaml", missing_ok=True).items()}


def upstream_head(lab) -> str:
    return git(lab.upstream, "rev-parse", "main")


def clean(lab) -> bool:
    return git(lab.flake_dir, "status", "--porcelain", "--", "secrets") == ""


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def test_rotation_is_committed_and_pushed_never_with_a_value(repo, cli, tmp_path):
    lab = repo
    # The repo's own hook sees what git runs with: never the operator's age key or its path.
    seen_env = tmp_path / "hook-env"
    hook = lab.flake_dir / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\nenv > {seen_env}\n")
    hook.chmod(0o755)
    r = rotate(cli, lab, "--due", "--yes", "--push", env={"VAULT_TOKEN": "token-CANARY"})
    assert r.returncode == 0, r.stdout + r.stderr
    hook_env = seen_env.read_text()
    assert "SOPS_AGE_KEY_FILE" not in hook_env and "CANARY" not in hook_env and "PATH=" in hook_env
    assert "git: committed" in r.stderr and "git: pushed to origin/main" in r.stderr
    subject = git(lab.flake_dir, "log", "-1", "--format=%s")
    assert "postgres/app (generation 1)" in subject and "tokend/token (generation 1)" in subject
    assert git(lab.flake_dir, "log", "-1", "--format=%an <%ae>") == "Rotation Bot <rotation@example.org>"
    assert set(git(lab.flake_dir, "show", "--name-only", "--format=", "HEAD").split()) == {
        "secrets/lab.yaml",
        "secrets/.rotation-state.yaml",
    }
    assert clean(lab) and upstream_head(lab) == git(lab.flake_dir, "rev-parse", "HEAD")

    # A second rotation: the message says which generation; no value anywhere in the history's text.
    r = rotate(cli, lab, "tokend/token", "--yes", "--push")
    assert r.returncode == 0, r.stdout + r.stderr
    assert git(lab.flake_dir, "log", "-1", "--format=%s") == "secrets: rotate tokend/token (generation 2)"
    assert "tokend/token: generation 1 -> 2" in git(lab.flake_dir, "log", "-1", "--format=%b")
    history = git(lab.flake_dir, "log", "-p", "--all") + git(lab.upstream, "log", "-p", "--all")
    now = values(lab)
    for key in ("postgres/app", "tokend/token", "_rotation/previous/tokend/token"):
        assert now[key] not in history, key
    assert upstream_head(lab) == git(lab.flake_dir, "rev-parse", "HEAD")

    # --no-commit opts out: the files change, no commit is made.
    head = git(lab.flake_dir, "rev-parse", "HEAD")
    r = rotate(cli, lab, "tokend/token", "--yes", "--no-commit")
    assert r.returncode == 0, r.stdout + r.stderr
    assert git(lab.flake_dir, "rev-parse", "HEAD") == head and not clean(lab)


def test_dirty_secrets_or_behind_upstream_refuse_and_touch_nothing(repo, cli, tmp_path):
    lab = repo
    assert rotate(cli, lab, "--due", "--yes", "--push").returncode == 0
    before_values = values(lab)

    # An uncommitted edit in secrets/: exit 3, nothing rotated, nothing written.
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    policy.write_text(policy.read_text() + "# an edit not committed yet\n")
    before = snapshot(lab.flake_dir)
    r = rotate(cli, lab, "tokend/token", "--yes")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "secrets/ has uncommitted changes (secrets/rotation.yaml)" in r.stderr
    assert snapshot(lab.flake_dir) == before and values(lab) == before_values
    assert lab.host("slax").path("/var/lib/tokend/token").read_text() == before_values["tokend/token"]
    git(lab.flake_dir, "commit", "-q", "-am", "policy comment")
    git(lab.flake_dir, "push", "-q")

    # A colleague rotates (or edits) and pushes first: we are behind after a fetch.
    colleague = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(lab.upstream), str(colleague))
    (colleague / "secrets" / "rotation.yaml").write_text(policy.read_text() + "# colleague\n")
    git(colleague, "commit", "-q", "-am", "colleague's change")
    git(colleague, "push", "-q")
    before = snapshot(lab.flake_dir)
    r = rotate(cli, lab, "tokend/token", "--yes", "--push")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "main is 1 commit(s) behind origin/main" in r.stderr and "git pull --rebase" in r.stderr
    assert snapshot(lab.flake_dir) == before and values(lab) == before_values

    # Caught up as told: the rotation goes through and is pushed.
    git(lab.flake_dir, "pull", "-q", "--rebase")
    r = rotate(cli, lab, "tokend/token", "--yes", "--push")
    assert r.returncode == 0, r.stdout + r.stderr
    assert upstream_head(lab) == git(lab.flake_dir, "rev-parse", "HEAD")


def test_crash_between_promote_and_commit_is_committed_next_run(repo, cli):
    lab = repo
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    head = git(lab.flake_dir, "rev-parse", "HEAD")
    crashed = rotate(cli, lab, "postgres/app", "--yes", env={"INFRATOOL_FAULT": "promoted"})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert git(lab.flake_dir, "rev-parse", "HEAD") == head and not clean(lab)

    # The changes are the crashed rotation's: not refused as "uncommitted", but committed.
    again = rotate(cli, lab, "--due", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert git(lab.flake_dir, "log", "-1", "--format=%s") == "secrets: rotate postgres/app (generation 2)"
    assert clean(lab) and git(lab.flake_dir, "rev-parse", "HEAD~1") == head

    # Without the crash's journal, the same kind of change is a person's: refused.
    (lab.flake_dir / "secrets" / ".rotation-state.yaml").write_text(
        (lab.flake_dir / "secrets" / ".rotation-state.yaml").read_text() + "# hand edit\n"
    )
    assert rotate(cli, lab, "--due", "--yes").returncode == 3


def test_rejected_push_keeps_the_commit_and_is_retried(repo, cli):
    lab = repo
    hook = lab.upstream / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes are frozen today' >&2\nexit 1\n")
    hook.chmod(0o755)
    pushed_before = upstream_head(lab)
    r = rotate(cli, lab, "--due", "--yes", "--push")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the next run pushes it again" in r.stderr
    committed = git(lab.flake_dir, "rev-parse", "HEAD")
    assert committed != pushed_before and upstream_head(lab) == pushed_before and clean(lab)

    # Nothing is due now; the next run still pushes what is waiting.
    hook.unlink()
    again = rotate(cli, lab, "--due", "--yes", "--push")
    assert again.returncode == 0, again.stdout + again.stderr
    assert upstream_head(lab) == committed and git(lab.flake_dir, "rev-parse", "HEAD") == committed


def test_not_a_git_repository_works_as_before_and_push_is_bad_input(fleet, cli):
    services.provision(fleet)
    r = rotate(cli, fleet, "tokend/token", "--yes", "--push")
    assert r.returncode == 3 and "not a git repository" in r.stderr
    r = rotate(cli, fleet, "tokend/token", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "git:" not in r.stderr
