"""The rotation policy's ``git:`` section: parsed, defaults, bad values located at file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from infratool.errors import InputError
from infratool.rotation.policy import GitPolicy, load_policy

BASE = """\
secrets:
  a/b:
    file: secrets/x.yaml
    generator: hex
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "hosts.yaml").write_text("hosts: {}\n")
    path = tmp_path / "secrets" / "rotation.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_commit_without_push(tmp_path):
    assert load_policy(write(tmp_path, BASE)).git == GitPolicy(commit=True, push=False, author=None)


def test_git_section_parses(tmp_path):
    text = BASE + 'git:\n  push: true\n  commit: true\n  author: "Rotation Bot <bot@example.org>"\n'
    assert load_policy(write(tmp_path, text)).git == GitPolicy(True, True, "Rotation Bot <bot@example.org>")


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        ("git:\n  push: yes please\n", 6, "git: push must be true or false"),
        ("git:\n  author: bot\n", 6, "author must look like 'Name <email>'"),
        ("git:\n  pusj: true\n", 6, "unknown key 'pusj' in git (did you mean 'push'?)"),
    ],
)
def test_bad_git_section_is_bad_input_with_its_line(tmp_path, section, line, message):
    path = write(tmp_path, BASE + section)
    with pytest.raises(InputError) as err:
        load_policy(path)
    assert err.value.line == line and message in err.value.message and err.value.file == str(path)
