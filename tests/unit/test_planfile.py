"""The plan file without a lab: schema, sealing with the real sops, and what cannot be saved."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from infratool import planfile
from infratool.changes import CHECK, Change, Plan
from infratool.errors import InputError
from infratool.secrets.seal import seal, unseal
from infratool.secrets.secret import Secret

CANARY = "CANARY-planfile-" + os.urandom(8).hex()


def _header(**kw) -> planfile.Header:
    base = dict(
        inventory="/x/hosts.yaml",
        inventory_digest="sha256:1",
        playbook="/x/site.yaml",
        playbook_digest="sha256:2",
    )
    return planfile.Header(**{**base, **kw})


def _repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fleet repo's secrets/ with an operator age key, as `infratool init` makes it."""
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = next(
        line.split()[-1] for line in key.read_text().splitlines() if line.startswith("# public key")
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\\.ya?ml$\n    age: {recipient}\n"
    )
    return secrets, {**os.environ, "SOPS_AGE_KEY_FILE": str(key)}


def _put(host: str, content, **extra) -> Change:
    args = {
        "path": "/var/lib/x",
        "content": content,
        "mode": 0o600,
        "owner": None,
        "group": None,
        "expect": None,
    }
    return Change(
        host, "files.content", "create /var/lib/x", op="files.put", args=args, action="create", **extra
    )


def test_secrets_are_sealed_with_sops_and_come_back_exactly(tmp_path):
    secrets_dir, env = _repo(tmp_path)
    binary = bytes(range(256))
    plan = Plan(hosts=["snix"], changes=[_put("snix", Secret(CANARY)), _put("snix", Secret(binary))])
    path = tmp_path / "plan.json"
    planfile.save(path, plan, _header(), lambda values: seal(values, secrets_dir, env=env))
    text = path.read_text()
    assert CANARY not in text and binary.hex() not in text
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(text)
    assert doc["version"] == planfile.PLAN_VERSION and doc["changes"][0]["args"]["content"] == {
        "$secret": "s0"
    }
    assert "ENC[AES256_GCM" in doc["sealed"]

    loaded = planfile.load(path)
    changes = planfile.changes_of(loaded, unseal(loaded.sealed, secrets_dir, env=env))
    assert changes[0].args["content"].reveal() == CANARY
    assert changes[1].args["content"].reveal() == binary
    assert changes[0].args["mode"] == 0o600 and changes[0].op == "files.put"


def test_unsealing_needs_an_operator_identity(tmp_path):
    secrets_dir, env = _repo(tmp_path)
    sealed = seal({"s0": Secret(CANARY)}, secrets_dir, env=env)
    stranger = tmp_path / "stranger.key"
    subprocess.run(["age-keygen", "-o", str(stranger)], check=True, capture_output=True)
    with pytest.raises(Exception, match="no matching age identity"):
        unseal(sealed, secrets_dir, env={**env, "SOPS_AGE_KEY_FILE": str(stranger)})


def test_a_closure_change_cannot_be_saved_and_the_message_names_the_task(tmp_path):
    plan = Plan(
        hosts=["snix"],
        changes=[
            _put("snix", b"x"),
            Change("snix", "remote_builders.check", "check", apply=lambda ctx: None),
        ],
    )
    with pytest.raises(InputError, match=r"remote_builders\.check still plan"):
        planfile.save(tmp_path / "p.json", plan, _header(), lambda v: "")
    assert not (tmp_path / "p.json").exists()


def test_a_secret_outside_a_secret_is_refused(tmp_path):
    Secret(CANARY)  # registered with the redactor, as every read or generated value is
    plan = Plan(hosts=["snix"], changes=[_put("snix", CANARY)])
    with pytest.raises(InputError, match="secret value outside a Secret"):
        planfile.save(tmp_path / "p.json", plan, _header(), lambda v: "")
    assert not (tmp_path / "p.json").exists()


def test_args_must_be_plain_data(tmp_path):
    plan = Plan(hosts=["snix"], changes=[_put("snix", object())])
    with pytest.raises(InputError, match="args hold a object"):
        planfile.save(tmp_path / "p.json", plan, _header(), lambda v: "")


def test_header_mismatch_says_which():
    h = _header()
    assert h.mismatch(_header()) is None
    assert "infratool 0.0.1" in _header(version="0.0.1").mismatch(h)
    assert "another inventory" in h.mismatch(_header(inventory_digest="sha256:9"))
    assert "another playbook" in h.mismatch(_header(playbook_digest="sha256:9"))


def test_not_a_plan_file_is_bad_input(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(InputError, match="not an infratool plan file"):
        planfile.load(p)
    p.write_text(json.dumps({"format": "infratool-plan", "version": 99}))
    with pytest.raises(InputError, match="version 99"):
        planfile.load(p)


def test_plan_json_and_plan_file_share_one_schema():
    check = Change("snix", "command", "check: true", op="command.run", args={"cmd": "true"}, action=CHECK)
    plan = Plan(hosts=["snix"], changes=[_put("snix", Secret(CANARY)), check])
    doc = plan.to_dict()
    assert doc["format"] == "infratool-plan" and doc["version"] == planfile.PLAN_VERSION
    assert doc["summary"] == {"changes": 1, "checks": 1, "failed_hosts": []}
    assert doc["changes"][0]["args"]["content"] == {"$secret": None}  # withheld, not sealed
    assert doc["changes"][1]["kind"] == "check"
    assert CANARY not in json.dumps(doc)
