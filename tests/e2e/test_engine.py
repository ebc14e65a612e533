"""The engine against the real lab: plan/run/idempotence, strict host keys, failures stay local."""

from __future__ import annotations

import json
import os
import time

import yaml
from conftest import PLAYBOOKS, files_containing
from exectrace import both_ends
from helpers import nix_eval, nix_parse, processes_with


def test_baseline_plans_runs_and_converges(lab, cli):
    inv = lab.inventory_path
    first = cli("-i", inv, "plan", PLAYBOOKS / "baseline.yaml", "--detailed-exitcode")
    assert first.returncode == 2, first.stderr
    assert "Plan: 8 change(s) on 4 of 4 target(s)" in first.stdout
    assert "+experimental-features = nix-command flakes" in first.stdout

    run = cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    for host in lab.hosts():
        conf = host.path("/etc/nix/nix.conf").read_text()
        assert "experimental-features = nix-command flakes" in conf
        assert "sandbox = false" in conf  # lines it does not manage are kept
        assert host.path("/var/lib/infratool/managed-by").stat().st_mode & 0o777 == 0o644

    again = cli("-i", inv, "plan", PLAYBOOKS / "baseline.yaml", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Plan: 0 change(s)" in again.stdout

    as_json = json.loads(cli("-i", inv, "--json", "plan", PLAYBOOKS / "baseline.yaml").stdout)
    assert as_json["changes"] == [] and len(as_json["hosts"]) == 4


def test_hand_edit_is_shown_and_restored(lab, cli):
    inv = lab.inventory_path
    assert cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes").returncode == 0
    conf = lab.host("brix").path("/etc/nix/nix.conf")
    conf.write_text(conf.read_text().replace("auto-optimise-store = true", "auto-optimise-store = false"))
    plan = cli("-i", inv, "plan", PLAYBOOKS / "baseline.yaml", "--detailed-exitcode")
    assert plan.returncode == 2
    assert "-auto-optimise-store = false" in plan.stdout and "+auto-optimise-store = true" in plan.stdout
    assert "brix: 1 change(s)" in plan.stdout and "snix: no changes" in plan.stdout
    assert cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes").returncode == 0
    assert "auto-optimise-store = true" in conf.read_text()


def test_changed_host_key_refuses_that_host_only(lab, cli):
    inv = lab.inventory_path
    brix = lab.host("brix")
    lab.regenerate_host_key("brix")
    log_before = brix.sshd_log.read_text()
    result = cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "HOST KEY CHANGED" in result.stdout + result.stderr
    assert "Expected SHA256:" in result.stdout and "offered SHA256:" in result.stdout
    new_log = brix.sshd_log.read_text()[len(log_before) :]
    # The key exchange failed before authentication: no login, no command.
    assert "Accepted publickey" not in new_log
    assert "Starting session" not in new_log
    assert not brix.path("/var/lib/infratool/managed-by").exists()
    for name in ("snix", "slax", "nixtv-player"):
        assert lab.host(name).path("/var/lib/infratool/managed-by").exists()
        assert "Accepted publickey" in lab.host(name).sshd_log.read_text()


def test_one_host_down_others_complete(lab, cli):
    inv = lab.inventory_path
    lab.stop_host("slax")
    result = cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes", "--forks", "2")
    assert result.returncode == 1
    assert "slax" in result.stdout and "unreachable" in result.stdout
    for name in ("snix", "brix", "nixtv-player"):
        assert lab.host(name).path("/var/lib/infratool/managed-by").exists()
    # The host comes back: the next run converges it, and only it.
    lab.start_host("slax")
    plan = cli("-i", inv, "plan", PLAYBOOKS / "baseline.yaml")
    assert "slax: 2 change(s)" in plan.stdout and "snix: no changes" in plan.stdout
    assert cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes").returncode == 0


def test_malformed_input_exits_3_without_connecting(lab, cli, tmp_path):
    logs = {h.name: h.sshd_log.read_text() for h in lab.hosts()}
    bad_inv = tmp_path / "bad-hosts.yaml"
    bad_inv.write_text(lab.inventory_path.read_text().replace("os: linux", "os: windows", 1))
    r = cli("-i", bad_inv, "run", PLAYBOOKS / "baseline.yaml", "--yes")
    assert r.returncode == 3 and f"{bad_inv}:4:" in r.stderr and "os must be one of" in r.stderr

    cases = {
        "tasks:\n  - task: files.nothing\n": (2, "unknown task"),
        "tasks:\n  - task: files.content\n    with: {path: /x, content: [1]}\n": (3, "must be a string"),
        "tasks:\n  - task: files.content\n    with: {path: /x\n": (4, "YAML syntax error"),
    }
    for text, (line, message) in cases.items():
        pb = tmp_path / "pb.yaml"
        pb.write_text(text)
        r = cli("-i", lab.inventory_path, "run", pb, "--yes")
        assert r.returncode == 3, r.stderr
        assert f"{pb}:{line}:" in r.stderr and message in r.stderr
    r = cli("-i", lab.inventory_path, "plan", PLAYBOOKS / "baseline.yaml", "--limit", "tag:nope")
    assert r.returncode == 3 and "matches no host" in r.stderr
    r = cli("-i", lab.inventory_path, "plan", PLAYBOOKS / "baseline.yaml", "--forks", "0")
    assert r.returncode == 3
    for h in lab.hosts():
        assert h.sshd_log.read_text() == logs[h.name], f"{h.name} was contacted"


def test_run_refuses_to_prompt_without_a_terminal(lab, cli):
    r = cli("-i", lab.inventory_path, "run", PLAYBOOKS / "baseline.yaml")
    assert r.returncode == 3 and "--yes" in r.stderr
    assert not lab.host("snix").path("/var/lib/infratool/managed-by").exists()


def test_canary_secret_file_never_leaks(lab, cli, tmp_path, _private_audit_log):
    canary = "CANARY-" + os.urandom(12).hex()
    pb = tmp_path / "secret.yaml"
    pb.write_text(
        "tasks:\n  - task: files.content\n    with:\n"
        f"      path: /var/lib/app/token\n      content: {canary}\n      secret: true\n      mode: '0600'\n"
    )
    playbook_text = pb.read_text()
    with both_ends(lab, cli, tmp_path / "execs") as seen:
        plan = seen.cli("-i", lab.inventory_path, "--json", "plan", pb)
        run = seen.cli("-i", lab.inventory_path, "-vv", "run", pb, "--yes")
        # Change it once more so an update (with an old value) is diffed too.
        pb.write_text(playbook_text.replace(canary, canary + "-v2"))
        run2 = seen.cli("-i", lab.inventory_path, "-vv", "run", pb, "--yes")
    assert run.returncode == 0 and run2.returncode == 0, run.stderr + run2.stderr
    seen.assert_recorded(min_sessions=2 * len(lab.hosts()))
    token = lab.host("brix").path("/var/lib/app/token")
    assert token.read_text() == canary + "-v2"
    assert token.stat().st_mode & 0o777 == 0o600
    assert "(secret content: not shown)" in run.stdout
    for out in (plan.stdout, plan.stderr, run.stdout, run.stderr, run2.stdout, run2.stderr):
        assert canary not in out
    assert seen.hits(canary) == [], "canary in a process's argv or environment"
    assert canary not in _private_audit_log.read_text()
    assert files_containing(tmp_path / "controller-tmp", canary) == []
    for h in lab.hosts():
        assert files_containing(h.path("/tmp"), canary) == []
        assert canary not in h.sshd_log.read_text()
        assert not list(h.path("/var/lib/app").glob(".infratool.*"))  # no temp file left


def test_atomic_write_keeps_mode_and_owner(lab, cli, tmp_path):
    snix = lab.host("snix")
    lab.exec(
        "snix",
        "mkdir -p /var/lib/app && printf old > /var/lib/app/conf && "
        "chown nobody:nogroup /var/lib/app/conf && chmod 640 /var/lib/app/conf",
        check=True,
    )
    pb = tmp_path / "pb.yaml"
    pb.write_text(
        "hosts: snix\ntasks:\n  - task: files.content\n    with: {path: /var/lib/app/conf, content: new}\n"
    )
    assert cli("-i", lab.inventory_path, "run", pb, "--yes").returncode == 0
    st = snix.path("/var/lib/app/conf").stat()
    assert snix.path("/var/lib/app/conf").read_text() == "new"
    assert st.st_mode & 0o777 == 0o640
    import pwd

    assert pwd.getpwuid(st.st_uid).pw_name == "nobody"
    assert sorted(p.name for p in snix.path("/var/lib/app").iterdir()) == ["conf"]


def test_nixos_hosts_get_generated_nix_and_a_deploy_step(lab, cli, tmp_path):
    record = tmp_path / "deploy.log"
    deploy = tmp_path / "fake-nixos-rebuild"
    deploy.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n')
    deploy.chmod(0o755)
    data = yaml.safe_load(lab.inventory_path.read_text())
    data["hosts"]["slax"]["os"] = "nixos"
    data["defaults"]["deploy_command"] = (
        f"{deploy} switch --flake {{flake}}#{{host}} --target-host {{user}}@{{address}}"
    )
    inv = tmp_path / "hosts.yaml"
    inv.write_text(yaml.safe_dump(data))
    plan = cli("-i", inv, "plan", PLAYBOOKS / "baseline.yaml")
    assert "create hosts/slax/generated/nix-settings.nix" in plan.stdout
    assert f"deploy slax: {deploy} switch --flake" in plan.stdout

    assert cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes", "--no-deploy").returncode == 0
    assert not record.exists()
    generated = lab.flake_dir / "hosts/slax/generated/nix-settings.nix"
    nix_parse(generated)
    assert nix_eval(f"(import {generated} {{}}).nix.settings") == {
        "auto-optimise-store": True,
        "experimental-features": ["nix-command", "flakes"],
    }
    # The nixos host's /etc/nix was not touched imperatively.
    assert "experimental-features" not in lab.host("slax").path("/etc/nix/nix.conf").read_text()

    generated.write_text(generated.read_text().replace("true", "false"))
    assert cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes").returncode == 0
    slax = lab.host("slax")
    assert record.read_text().split() == [
        "switch",
        "--flake",
        f"{lab.flake_dir}#slax",
        "--target-host",
        f"root@{slax.address}",
    ]


def test_scale_lab_32_hosts_plan(lab_factory, cli):
    big = lab_factory(32)
    start = time.monotonic()
    r = cli("-i", big.inventory_path, "--json", "plan", PLAYBOOKS / "baseline.yaml", "--forks", "16")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["hosts"]) == 32 and not data["failures"]
    assert len(data["changes"]) == 64
    assert time.monotonic() - start < 120
    big.down()
    assert processes_with(str(big.root)) == []  # no process of the lab is left


def test_a_cut_transfer_never_replaces_a_file(lab):
    """A controller killed mid-write ends the host's stdin early: the old file must survive."""
    from infratool.inventory import load
    from infratool.remote import FileWrite, Remote, payload_sizes, put_files_script

    inv = load(lab.inventory_path)
    target = lab.host("brix").path("/var/lib/app/conf")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("original\n")
    write = FileWrite("/var/lib/app/conf", b"n" * 1000)
    with Remote(inv["brix"]) as remote:
        cut = remote.run(put_files_script([write], payload_sizes([write])), stdin=b"n" * 400, check=False)
        assert not cut.ok
        assert target.read_text() == "original\n"
        assert [p.name for p in target.parent.iterdir()] == ["conf"]
        remote.put_file("/var/lib/app/conf", b"new\n")
    assert target.read_text() == "new\n"


def test_hosts_and_facts_commands(lab, cli):
    inv = lab.inventory_path
    listing = cli("-i", inv, "--json", "hosts", "--check")
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)["hosts"]}
    assert set(rows) == {"snix", "slax", "brix", "nixtv-player"}
    assert all(r["reachable"] is True and r["error"] is None and r["pinned"] for r in rows.values())
    assert rows["snix"]["tags"] == ["workstation", "builder", "cache"]

    facts = json.loads(cli("-i", inv, "--json", "facts", "--limit", "snix,brix").stdout)["hosts"]
    assert set(facts) == {"snix", "brix"}
    assert facts["brix"]["hostname"] == "brix"
    assert facts["snix"]["nix_version"].startswith("2.")
    assert "root" in facts["snix"]["users"]

    lab.stop_host("slax")
    down = cli("-i", inv, "hosts", "--check")
    assert down.returncode == 1 and "slax" in down.stdout
    lab.regenerate_host_key("brix")
    refused = cli("-i", inv, "facts", "--limit", "brix")
    assert refused.returncode == 4


def test_lab_cli_up_status_down(cli, tmp_path, lab_subnet):
    from infratool_lab import Lab

    root = tmp_path / "cli-lab"
    Lab(root, subnet=lab_subnet).up(2)  # choose a free subnet; the CLI reopens the lab on it
    env = {"INFRATOOL_LAB_DIR": str(root)}
    try:
        up = cli("lab", "up", "--hosts", "2", env=env)
        assert up.returncode == 0, up.stderr
        assert "SOPS_AGE_KEY_FILE" in up.stdout
        status = json.loads(cli("--json", "lab", "status", env=env).stdout)["hosts"]
        assert [s["name"] for s in status] == ["snix", "slax"] and all(s["running"] for s in status)
    finally:
        assert cli("lab", "down", env=env).returncode == 0
    status = json.loads(cli("--json", "lab", "status", env=env).stdout)["hosts"]
    assert not any(s["running"] for s in status)
