"""Issue 13.12: notify commands and local commands get a minimal environment, not the operator's.

Real processes: a notify command and a local command dump their environment
(``env``) while the controller's environment holds an age identity and tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infratool.context import LocalContext
from infratool.rotation.notify import notify
from infratool.rotation.policy import Notify, Policy

SECRETS = {
    "SOPS_AGE_KEY": "AGE-SECRET-KEY-1CANARYCANARYCANARY",
    "SOPS_AGE_KEY_FILE": "/root/.config/sops/age/keys.txt",
    "VAULT_TOKEN": "hvs.CANARY",
    "AWS_SECRET_ACCESS_KEY": "CANARYAWS",
    "INFRATOOL_AUDIT_LOG": "/tmp/audit.jsonl",
}


@pytest.fixture
def hostile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/user/0/ssh-agent.sock")


def _names(env_output: str) -> set[str]:
    return {line.split("=", 1)[0] for line in env_output.splitlines() if "=" in line}


def test_notify_command_sees_no_secret_of_the_controller(tmp_path: Path, hostile_env: None) -> None:
    out = tmp_path / "env.txt"
    policy = Policy(tmp_path / "p.yaml", tmp_path, {}, Notify(command=f"env > {out}"))
    notify(policy, "failure", "rotation of x failed")
    names = _names(out.read_text())
    assert "PATH" in names and "LANG" in names
    assert not names & set(SECRETS), names & set(SECRETS)
    assert "CANARY" not in out.read_text()


def test_local_commands_see_no_secret_of_the_controller(tmp_path: Path, hostile_env: None) -> None:
    proc = LocalContext(tmp_path).run(["env"])
    names = _names(proc.stdout.decode())
    assert "PATH" in names and "SSH_AUTH_SOCK" in names  # a deploy over ssh still finds its agent
    assert not names & set(SECRETS), names & set(SECRETS)
