"""`secrets check` feeds each verify what a rotation's verify gets (rotation/drift.py `_stdin`)."""

from __future__ import annotations

from pathlib import Path

from infratool.rotation.drift import _stdin
from infratool.rotation.policy import parse_policy
from infratool.secrets.secret import Secret

POLICY = {
    "secrets": {
        "web/password": {
            "file": "secrets/x.yaml",
            "generator": "password",
            "params": {"length": 20},
            "consumers": [
                {
                    "host": "brix",
                    "command": {"run": "psql -f -", "stdin": "ALTER ROLE app PASSWORD '{value}';"},
                }
            ],
        },
        "web/htpasswd": {
            "file": "secrets/x.yaml",
            "generator": "derive",
            "from": "web/password",
            "params": {"function": "htpasswd", "user": "admin"},
            "consumers": [
                {
                    "host": "brix",
                    "file": {"path": "/etc/nginx/htpasswd"},
                    "verify": {"run": "check-login", "stdin": "admin:{web/password}"},
                }
            ],
        },
    }
}


def test_template_and_derived_source_are_filled_with_current_values(tmp_path: Path):
    policy = parse_policy(POLICY, tmp_path / "rotation.yaml", {"brix"}, root=tmp_path)
    values = {"web/password": Secret("current-password"), "web/htpasswd": Secret("admin:$2y$hash")}
    pw = policy.secrets["web/password"]
    command = pw.consumers[0].command
    assert _stdin(pw, command, values["web/password"], None, values).reveal() == (
        "ALTER ROLE app PASSWORD 'current-password';"
    )
    derived = policy.secrets["web/htpasswd"]
    verify = derived.consumers[0].verify
    assert _stdin(derived, verify, values["web/htpasswd"], None, values).reveal_bytes() == (
        b"admin:current-password"
    )
