"""Every path that rotates or re-encrypts commits like `secrets rotate` (issue 15 §2).

`run` of a rotation playbook, `host add` and `host remove` in a git fleet repo
with a real bare upstream (the ``repo`` fixture of test_rotation_git.py): the
same refusals before anything is touched (a dirty ``secrets/``), a commit
after that names what happened and holds no value.
"""

from __future__ import annotations

import json

import pytest
from conftest import PLAYBOOKS
from helpers import openssh_fingerprint
from test_rotation_git import clean, git, make_repo, snapshot, upstream_head, values

from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore

ROTATION_PLAYBOOK = PLAYBOOKS / "secrets-rotation.yaml"


@pytest.fixture
def repo(fleet, tmp_path):
    """The lab fleet repo in git with a bare upstream (as in test_rotation_git.py)."""
    return make_repo(fleet, tmp_path)


def test_run_of_a_rotation_playbook_refuses_a_dirty_tree_then_commits_and_pushes(repo, cli):
    lab, inv = repo, repo.inventory_path
    notes = lab.flake_dir / "secrets" / "notes.txt"
    notes.write_text("an edit not committed yet\n")
    before = snapshot(lab.flake_dir)
    refused = cli("-i", inv, "run", ROTATION_PLAYBOOK, "--yes")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "secrets/ has uncommitted changes (secrets/notes.txt)" in refused.stderr
    assert snapshot(lab.flake_dir) == before and values(lab) == {}  # nothing rotated, nothing written
    notes.unlink()

    r = cli("-i", inv, "run", ROTATION_PLAYBOOK, "--yes", "--push")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "git: committed" in r.stderr and "git: pushed to origin/main" in r.stderr
    subject = git(lab.flake_dir, "log", "-1", "--format=%s")
    assert "postgres/app (generation 1)" in subject and "tokend/token (generation 1)" in subject
    assert "Committed by `infratool run`" in git(lab.flake_dir, "log", "-1", "--format=%b")
    assert clean(lab) and upstream_head(lab) == git(lab.flake_dir, "rev-parse", "HEAD")
    history = git(lab.flake_dir, "log", "-p", "--all")
    assert all(v not in history for v in values(lab).values())

    # A playbook that rotates nothing commits nothing (and asking it to push is bad input).
    baseline = cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes", "--push")
    assert baseline.returncode == 3 and "rotates nothing" in baseline.stderr, baseline.stderr


def test_host_add_and_remove_commit_the_reencrypted_files_and_refuse_a_dirty_tree(repo, cli):
    lab, inv = repo, repo.inventory_path
    assert cli("-i", inv, "secrets", "rotate", "--due", "--yes").returncode == 0  # lab.yaml exists
    fp = openssh_fingerprint(lab.host("brix").host_key_public)
    added = cli("-i", inv, "host", "add", "brix", "--address", lab.host("brix").address, "--fingerprint", fp)
    assert added.returncode == 0, added.stdout + added.stderr
    assert git(lab.flake_dir, "log", "-1", "--format=%s") == "hosts: add brix"
    assert "secrets/.sops.yaml" in git(lab.flake_dir, "show", "--name-only", "--format=", "HEAD")
    assert clean(lab)
    # brix now reads a file of its own (its creation rule): host remove must give it a new data key.
    SopsStore(lab.flake_dir / "secrets").write("brix.yaml", {"app/brix-token": Secret("brix-only-value")})
    git(lab.flake_dir, "add", "secrets/brix.yaml")
    git(lab.flake_dir, "commit", "-q", "-m", "a secret for brix")

    # Dirty secrets/: host remove refuses before touching the inventory or any sops file.
    notes = lab.flake_dir / "secrets" / "notes.txt"
    notes.write_text("an edit not committed yet\n")
    before, inventory = snapshot(lab.flake_dir), inv.read_text()
    refused = cli("-i", inv, "host", "remove", "brix", "--yes")
    assert refused.returncode == 3 and "uncommitted changes" in refused.stderr, refused.stderr
    assert snapshot(lab.flake_dir) == before and inv.read_text() == inventory
    notes.unlink()

    removed = cli("-i", inv, "--json", "host", "remove", "brix", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    rekeyed = {
        f"secrets/{p.rsplit('/', 1)[-1]}"
        for p in json.loads(removed.stdout)["revocation"]["data_keys_rotated"]
    }
    assert "secrets/brix.yaml" in rekeyed
    assert git(lab.flake_dir, "log", "-1", "--format=%s") == "hosts: remove brix"
    body = git(lab.flake_dir, "log", "-1", "--format=%b")
    assert (
        "Committed by `infratool host remove`" in body
        and "new data key (sops rotate), without the old key: brix.yaml" in body
    )
    changed = set(git(lab.flake_dir, "show", "--name-only", "--format=", "HEAD").split())
    assert changed == {"secrets/.sops.yaml", *rekeyed}
    assert clean(lab) and "app/brix-token" not in body
