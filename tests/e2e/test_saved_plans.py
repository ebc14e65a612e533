"""Saved plans against the lab: `plan -o FILE`, `apply FILE`, `run PLAYBOOK --plan FILE`.

What was reviewed is what gets applied: generated material shown in the plan
is the material installed; a host whose facts changed since the plan is
refused (status stale, exit 5) and left untouched while the others apply; a
plan made for another playbook, inventory or version, or from a template or
source edited since, is refused with exit 3;
no secret is in a plan file in clear.
"""

from __future__ import annotations

import json
import re

import yaml
from cryptography.hazmat.primitives import serialization
from helpers import PLAYBOOKS, ROOT

PLUGINS = {"PYTHONPATH": str(ROOT / "tests" / "plugins"), "INFRATOOL_TEST_PLUGINS": "1"}


def _playbook(tmp, name, tasks):
    p = tmp / name
    p.write_text(yaml.safe_dump({"name": name, "hosts": "all", "tasks": tasks}))
    return p


def test_the_key_shown_in_the_plan_is_the_key_installed(fleet, cli, tmp_path):
    inv = fleet.inventory_path
    book = _playbook(tmp_path, "keys.yaml", [{"task": "test.keypair", "with": {"path": "/var/lib/app/id"}}])
    plan_file = tmp_path / "keys.plan.json"
    planned = cli("-i", inv, "plan", book, "-o", plan_file, "--limit", "snix,slax", env=PLUGINS)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    shown = dict(
        re.findall(
            r"(snix|slax): .*?\n\s+\+ install private key.*?\n\s+\+ install public key (ssh-ed25519 \S+)",
            planned.stdout,
            re.S,
        )
    )
    assert set(shown) == {"snix", "slax"}, planned.stdout

    applied = cli("-i", inv, "apply", plan_file, "--yes", env=PLUGINS)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    text = plan_file.read_text()
    doc = json.loads(text)
    assert doc["version"] == 1 and doc["format"] == "infratool-plan"
    assert "ENC[AES256_GCM" in doc["sealed"]  # sealed by the real sops
    for name in ("snix", "slax"):
        host = fleet.host(name)
        public = host.path("/var/lib/app/id.pub").read_text().strip()
        assert public == shown[name], "the key installed is not the key the plan showed"
        private = host.path("/var/lib/app/id").read_bytes()
        assert host.path("/var/lib/app/id").stat().st_mode & 0o777 == 0o600
        key = serialization.load_ssh_private_key(private, None)
        derived = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        assert derived.decode() == public  # the private key installed belongs to the key shown
        body = b"".join(private.splitlines()[1:-1]).decode()
        assert body[:40] not in text and body[-40:] not in text, "private key in clear in the plan file"
    assert not fleet.host("brix").path("/var/lib/app/id").exists()  # --limit was kept

    again = cli("-i", inv, "plan", book, "--limit", "snix,slax", "--detailed-exitcode", env=PLUGINS)
    assert again.returncode == 0, again.stdout


def test_a_host_changed_since_the_plan_is_refused_the_others_apply(lab, cli, tmp_path):
    inv = lab.inventory_path
    book = _playbook(
        tmp_path,
        "motd.yaml",
        [{"task": "files.content", "with": {"path": "/var/lib/app/motd-x", "content": "managed\n"}}],
    )
    plan_file = tmp_path / "motd.plan.json"
    planned = cli("-i", inv, "plan", book, "-o", plan_file)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "Plan: 4 change(s) on 4 of 4 target(s)" in planned.stdout

    brix = lab.host("brix").path("/var/lib/app/motd-x")
    brix.parent.mkdir(parents=True, exist_ok=True)
    brix.write_text("written by hand after the plan\n")
    result = cli("-i", inv, "apply", plan_file, "--yes")
    out = result.stdout + result.stderr
    assert result.returncode == 5, out
    assert "brix" in out and "facts changed since the plan: /var/lib/app/motd-x" in out
    assert re.search(r"brix\s+.*stale|brix\s+status=stale", result.stdout), result.stdout
    assert brix.read_text() == "written by hand after the plan\n"  # nothing touched there
    for name in ("snix", "slax", "nixtv-player"):
        assert lab.host(name).path("/var/lib/app/motd-x").read_text() == "managed\n"

    as_json = cli("-i", inv, "--json", "apply", plan_file, "--yes")
    doc = json.loads(as_json.stdout)
    brix_result = next(r for r in doc["results"] if r["host"] == "brix")
    assert brix_result["status"] == "stale" and brix_result["applied"] == []


def test_a_plan_for_another_playbook_inventory_or_version_is_refused(lab, cli, tmp_path):
    inv = lab.inventory_path
    a = _playbook(
        tmp_path, "a.yaml", [{"task": "files.content", "with": {"path": "/var/lib/app/a", "content": "a\n"}}]
    )
    b = _playbook(
        tmp_path, "b.yaml", [{"task": "files.content", "with": {"path": "/var/lib/app/b", "content": "b\n"}}]
    )
    plan_file = tmp_path / "a.plan.json"
    assert cli("-i", inv, "plan", a, "-o", plan_file).returncode == 0

    other = cli("-i", inv, "run", b, "--plan", plan_file, "--yes")
    assert other.returncode == 3, other.stdout + other.stderr
    assert "another playbook" in other.stderr and len(other.stderr.strip().splitlines()) == 1

    original = a.read_text()
    a.write_text(original + "# edited after the plan\n")
    edited = cli("-i", inv, "apply", plan_file, "--yes")
    assert edited.returncode == 3 and "another playbook" in edited.stderr, edited.stderr

    a.write_text(original)
    doc = json.loads(plan_file.read_text())
    doc["infratool"] = "0.0.1"
    old = tmp_path / "old.plan.json"
    old.write_text(json.dumps(doc))
    version = cli("-i", inv, "apply", old, "--yes")
    assert version.returncode == 3 and "infratool 0.0.1" in version.stderr, version.stderr

    inv2 = tmp_path / "hosts2.yaml"
    inv2.write_text(inv.read_text() + "\n# another inventory\n")
    inventory = cli("-i", inv2, "apply", plan_file, "--yes")
    assert inventory.returncode == 3 and "another inventory" in inventory.stderr, inventory.stderr
    for h in lab.hosts():
        assert not h.path("/var/lib/app/a").exists() and not h.path("/var/lib/app/b").exists()

    applied = cli("-i", inv, "run", a, "--plan", plan_file, "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert all(h.path("/var/lib/app/a").read_text() == "a\n" for h in lab.hosts())


def test_a_planning_bug_on_one_host_fails_that_host_only(lab, cli, tmp_path):
    book = _playbook(
        tmp_path,
        "bug.yaml",
        [
            {"task": "test.explode", "with": {"hosts": ["slax"]}},
            {"task": "files.content", "with": {"path": "/var/lib/app/after-bug", "content": "ok\n"}},
        ],
    )
    result = cli("-i", lab.inventory_path, "run", book, "--yes", env=PLUGINS)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "ValueError" in out and "planted bug on slax" in out
    assert not lab.host("slax").path("/var/lib/app/after-bug").exists()
    for name in ("snix", "brix", "nixtv-player"):
        assert lab.host(name).path("/var/lib/app/after-bug").read_text() == "ok\n"


def test_a_check_is_shown_verified_and_not_planned_once_converged(lab, cli, tmp_path):
    inv = lab.inventory_path
    book = _playbook(
        tmp_path,
        "checked.yaml",
        [
            {"task": "files.content", "with": {"path": "/var/lib/app/checked", "content": "v1\n"}},
            {"task": "command", "with": {"command": "grep -q v1 /var/lib/app/checked", "check": True}},
        ],
    )
    first = cli("-i", inv, "plan", book, "--detailed-exitcode")
    assert first.returncode == 2
    assert "Plan: 4 change(s), 4 check(s) on 4 of 4 target(s)" in first.stdout, first.stdout
    assert "? check: grep -q v1 /var/lib/app/checked" in first.stdout

    run = cli("-i", inv, "--json", "run", book, "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["plan"]["summary"] == {"changes": 4, "checks": 4, "failed_hosts": []}
    for r in doc["results"]:
        assert r["status"] == "changed" and r["applied"] == ["create /var/lib/app/checked (mode 0644)"]
        assert r["verified"] == ["check: grep -q v1 /var/lib/app/checked"]

    again = cli("-i", inv, "plan", book, "--detailed-exitcode")
    assert again.returncode == 0, again.stdout  # 0 changes and 0 checks
    assert "Plan: 0 change(s) on 0 of 4 target(s)" in again.stdout

    # A hand edit on one host: that host gets its change and its check again, only it.
    lab.host("brix").path("/var/lib/app/checked").write_text("edited\n")
    edited = cli("-i", inv, "run", book, "--yes")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "brix: 1 change(s), 1 check(s)" in edited.stdout and "snix: no changes" in edited.stdout
    assert re.search(r"brix\s.*check: grep -q v1", edited.stdout), edited.stdout

    # A failing check fails its host, is never counted as changed, and is planned again next time.
    (tmp_path / "checked.yaml").write_text(
        (tmp_path / "checked.yaml").read_text().replace("grep -q v1", "grep -q v2")
    )
    failing = cli("-i", inv, "run", book, "--yes", "--limit", "snix")
    assert failing.returncode == 1 and "check failed" in failing.stdout, failing.stdout
    # Only a check pending: nothing would change, so --detailed-exitcode says 0 (terraform's 2 is
    # "changes present"), while the plan still shows the check it would run.
    replanned = cli("-i", inv, "plan", book, "--limit", "snix", "--detailed-exitcode")
    assert replanned.returncode == 0 and "0 change(s), 1 check(s)" in replanned.stdout
    as_json = cli("-i", inv, "--json", "plan", book, "--limit", "snix", "--detailed-exitcode")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["summary"]["checks"] == 1


def test_builder_keys_shown_in_a_saved_plan_are_the_keys_authorized(fleet, cli, tmp_path):
    """The issue's case: `plan remote-builders.yaml` showed one key and the run stored another."""
    inv = fleet.inventory_path
    plan_file = tmp_path / "builders.plan.json"
    planned = cli("-i", inv, "plan", PLAYBOOKS / "remote-builders.yaml", "-o", plan_file)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    shown = dict(re.findall(r"generate builder key of (\S+) \(ssh-ed25519 (\S+)\)", planned.stdout))
    assert sorted(shown) == ["brix", "nixtv-player", "slax"], planned.stdout
    applied = cli("-i", inv, "apply", plan_file, "--yes")
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
    authorized = fleet.host("snix").path("/var/lib/nixremote/.ssh/authorized_keys").read_text()
    for client, blob in shown.items():
        assert blob in authorized, f"{client}'s key shown in the plan is not the key authorized"
    text = plan_file.read_text()
    assert "PRIVATE KEY" not in text and "ENC[AES256_GCM" in text  # private keys sealed


def test_a_template_or_source_edited_since_the_plan_is_refused(lab, cli, tmp_path):
    # A saved plan carries the content rendered while planning; a template (or
    # source) edited since is an input that changed, refused like an edited playbook.
    inv = lab.inventory_path
    template = tmp_path / "motd.tmpl"
    template.write_text("hello $host\n")
    source = tmp_path / "banner.txt"
    source.write_text("banner\n")
    book = _playbook(
        tmp_path,
        "tmpl.yaml",
        [
            {"task": "files.content", "with": {"path": "/var/lib/app/motd-t", "template": "motd.tmpl"}},
            {"task": "files.content", "with": {"path": "/var/lib/app/banner", "source": "banner.txt"}},
        ],
    )
    plan_file = tmp_path / "tmpl.plan.json"
    assert cli("-i", inv, "plan", book, "--limit", "snix", "-o", plan_file).returncode == 0
    assert str(template.resolve()) in json.loads(plan_file.read_text())["inputs"]

    for edited, original in ((template, "hello $host\n"), (source, "banner\n")):
        edited.write_text(original.replace("\n", " (edited after the plan)\n"))
        refused = cli("-i", inv, "apply", plan_file, "--yes")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert f"{edited.resolve()} changed since the plan" in refused.stderr, refused.stderr
        assert not lab.host("snix").path("/var/lib/app/motd-t").exists()
        edited.write_text(original)

    applied = cli("-i", inv, "apply", plan_file, "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert lab.host("snix").path("/var/lib/app/motd-t").read_text() == "hello snix\n"
