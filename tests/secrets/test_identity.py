"""The age identity check a run makes before its first change (issue 13.7), with the real sops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infratool.errors import SecretsFileError
from infratool.onboard.scaffold import ensure_operator_repo, new_age_key
from infratool.secrets import identity
from infratool.secrets.store import SopsStore


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key = tmp_path / "operator.txt"
    ensure_operator_repo(tmp_path / "fleet", key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ssh/id_ed25519 to count
    SopsStore(tmp_path / "fleet" / "secrets").write("db.yaml", {"db/password": "value-" + "x" * 12})
    return tmp_path / "fleet" / "secrets"


def test_the_operator_passes_even_when_a_file_this_run_does_not_read_is_tampered(repo: Path) -> None:
    path = repo / "db.yaml"
    path.write_text(path.read_text().replace("ENC[AES256_GCM,data:", "ENC[AES256_GCM,data:AA", 1))
    identity.check(SopsStore(repo))  # metadata intact: whoever reads it gets the MAC error, named


def test_a_key_that_is_no_recipient_is_named_with_the_file(repo: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.txt"
    new_age_key(stranger)
    env = {**os.environ, "SOPS_AGE_KEY_FILE": str(stranger)}
    with pytest.raises(SecretsFileError) as exc:
        identity.check(SopsStore(repo, env=env))
    assert exc.value.file == "db.yaml" and "none of your age identities" in exc.value.message
    (repo / "db.yaml").unlink()  # nothing to read: the creation rule is what would fail
    with pytest.raises(SecretsFileError) as exc:
        identity.check(SopsStore(repo, env=env))
    assert exc.value.file is not None and exc.value.file.endswith(".sops.yaml") and exc.value.line


def test_an_opaque_key_command_is_not_second_guessed(repo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SOPS_AGE_KEY_FILE": str(tmp_path / "none"), "SOPS_AGE_KEY_CMD": "cat /dev/null"}
    identity.check(SopsStore(repo, env=env))
