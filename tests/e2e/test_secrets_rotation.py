"""Secrets rotation end to end: real sops, real PostgreSQL, a real SIGHUP-reloading service.

Covers the bars of the rotation issue: new value works and old fails, rollback
on a failed verify, kill -9 after every step converges, the canary never
leaks, concurrent rotations never corrupt, bad input touches nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
import yaml
from conftest import PLAYBOOKS, files_containing
from exectrace import both_ends
from helpers import SshdLogs, nix_parse, tokend_accepts, wait_stopped
from infratool_lab import services

from infratool.rotation.lock import lock_path
from infratool.secrets.store import SopsStore

STEPS = ["generated", "stored", "delivered-one", "delivered", "verified", "promoting", "promoted"]
ROLLBACK_STEPS = ["rolled-back-one", "rolled-back", "discarded"]


@pytest.fixture
def rot(fleet):
    """The lab with PostgreSQL on brix, tokend on slax, and the lab's rotation policy."""
    services.provision(fleet)
    return fleet


def store(lab) -> SopsStore:
    return SopsStore(lab.flake_dir / "secrets")


def values(lab) -> dict[str, str]:
    s = store(lab)
    if not s.exists("lab.yaml"):
        return {}
    return {k: str(v.reveal()) for k, v in s.read("lab.yaml").items()}


def pg_login(lab, password: str) -> bool:
    address = lab.host("brix").address
    r = lab.exec(
        "brix",
        f"read -r PGPASSWORD; export PGPASSWORD; psql 'host={address} user=app dbname=postgres' "
        "-tAc 'select 1'",
        input=password.encode() + b"\n",
    )
    return r.returncode == 0 and r.stdout.strip() == b"1"


def rotate(cli, lab, *args, env=None):
    return cli("-i", lab.inventory_path, "secrets", "rotate", *args, env=env)


def test_rotation_end_to_end(rot, cli):
    lab = rot
    due = rotate(cli, lab, "--due", "--yes")
    assert due.returncode == 0, due.stdout + due.stderr
    # Nothing rolled back: the rollback and finish changes did nothing and are not counted as applied.
    assert re.search(r"brix\s+status=changed\s+applied=2\s+nothing_to_do=1", due.stdout), due.stdout
    first = values(lab)
    assert pg_login(lab, first["postgres/app"]) and tokend_accepts(lab, first["tokend/token"])

    r = rotate(cli, lab, "postgres/app", "tokend/token", "--yes", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    results = {row["host"]: row for row in json.loads(r.stdout)["results"]}
    for host in ("brix", "slax"):
        row = results[host]
        assert row["status"] == "changed" and row["applied"], row
        assert not [a for a in row["applied"] if "if a check failed" in a], row
        assert [n for n in row["nothing_to_do"] if "if a check failed" in n and "nothing to put back" in n]
    local = next(row for host, row in results.items() if host.startswith("local"))
    assert any(n.startswith("finish the rotation") for n in local["nothing_to_do"]), local
    assert not any(a.startswith("finish the rotation") for a in local["applied"]), local
    now = values(lab)
    assert now["postgres/app"] != first["postgres/app"]
    assert now["_rotation/previous/postgres/app"] == first["postgres/app"]
    assert not any(k.startswith("_rotation/pending/") for k in now)
    assert pg_login(lab, now["postgres/app"]) and not pg_login(lab, first["postgres/app"])
    assert tokend_accepts(lab, now["tokend/token"]) and not tokend_accepts(lab, first["tokend/token"])
    token_file = lab.host("slax").path("/var/lib/tokend/token")
    assert token_file.stat().st_mode & 0o777 == 0o600

    status = cli("-i", lab.inventory_path, "--json", "secrets", "status")
    assert status.returncode == 0, status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)["secrets"]}
    assert rows["postgres/app"]["age_seconds"] < 60 and rows["postgres/app"]["generation"] == 2
    assert rows["postgres/app"]["due"] is False and rows["postgres/app"]["consumers"] == ["brix"]

    # Converged: the playbook plans nothing.
    plan = cli("-i", lab.inventory_path, "plan", PLAYBOOKS / "secrets-rotation.yaml", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_failed_verify_rolls_every_consumer_back(rot, cli):
    lab = rot
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    before = values(lab)
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    data = yaml.safe_load(policy.read_text())
    # A second consumer of the token whose verify fails: the rotation must not stick anywhere.
    data["secrets"]["tokend/token"]["consumers"].append(
        {"host": "brix", "file": {"path": "/var/lib/app/token", "mode": "0600"}, "verify": "exit 1"}
    )
    policy.write_text(yaml.safe_dump(data))
    r = rotate(cli, lab, "tokend/token", "--yes")
    assert r.returncode == 1
    assert "verify failed on brix" in r.stdout + r.stderr
    after = values(lab)
    assert after["tokend/token"] == before["tokend/token"]
    assert not any(k.startswith("_rotation/pending/") for k in after)
    assert tokend_accepts(lab, before["tokend/token"])
    assert lab.host("brix").path("/var/lib/app/token").read_text() == before["tokend/token"]
    status = json.loads(cli("-i", lab.inventory_path, "--json", "secrets", "status").stdout)["secrets"]
    assert {r["name"]: r["status"] for r in status}["tokend/token"] == "failed"


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_after_each_step_converges(rot, cli, step):
    lab = rot
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    data = yaml.safe_load(policy.read_text())
    # Two consumers, so a crash between them is possible: the database and the app's password file.
    data["secrets"]["postgres/app"]["consumers"].append(
        {"host": "brix", "file": {"path": "/var/lib/app/db-password", "mode": "0600"}}
    )
    policy.write_text(yaml.safe_dump(data))
    assert rotate(cli, lab, "postgres/app", "--yes").returncode == 0
    old = values(lab)["postgres/app"]

    crashed = rotate(cli, lab, "postgres/app", "--yes", env={"INFRATOOL_FAULT": step})
    assert crashed.returncode == -9, crashed.stderr  # really killed, mid-way

    again = cli("-i", lab.inventory_path, "secrets", "rotate", "--due", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    final = values(lab)
    current = final["postgres/app"]
    assert not any(k.startswith("_rotation/pending/") for k in final)
    # The service and the app's file agree on the value sops holds as current.
    assert pg_login(lab, current)
    assert lab.host("brix").path("/var/lib/app/db-password").read_text() == current
    if step in ("verified", "promoting", "promoted"):
        assert current != old and final["_rotation/previous/postgres/app"] == old
    if step == "promoted":
        # A promotion the crash kept from being recorded is recorded, not redone.
        assert "record rotation of postgres/app" in again.stdout
    status = json.loads(cli("-i", lab.inventory_path, "--json", "secrets", "status").stdout)["secrets"]
    assert {r["name"]: r["status"] for r in status}["postgres/app"] == "ok"
    assert lab.flake_dir.joinpath("secrets", "lab.yaml").read_text().count("ENC[") >= 2


def _app_password_consumer(lab, verify: str | None = None) -> None:
    """Give postgres/app a second consumer on brix: the app's password file (with ``verify``)."""
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    data = yaml.safe_load(policy.read_text())
    consumer = {"host": "brix", "file": {"path": "/var/lib/app/db-password", "mode": "0600"}}
    if verify:
        consumer["verify"] = verify
    data["secrets"]["postgres/app"]["consumers"].append(consumer)
    policy.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_kill_9_during_rollback_converges(rot, cli, step):
    """A rotation whose verify fails is killed in its rollback; the rerun rolls back all the way."""
    lab = rot
    # The app accepts any value while /var/lib/app/broken is absent; while it exists,
    # only the value it knows (the old one): so a new value fails to verify.
    _app_password_consumer(
        lab,
        verify='read -r v && [ ! -e /var/lib/app/broken ] || [ "$v" = "$(cat /var/lib/app/known-good)" ]',
    )
    assert rotate(cli, lab, "postgres/app", "--yes").returncode == 0
    old = values(lab)["postgres/app"]
    app = lab.host("brix").path("/var/lib/app")
    (app / "known-good").write_text(old + "\n")
    (app / "broken").write_text("")

    crashed = rotate(cli, lab, "postgres/app", "--yes", env={"INFRATOOL_FAULT": step})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr

    again = rotate(cli, lab, "postgres/app", "--yes")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "every consumer is back on the current value" in again.stdout + again.stderr
    final = values(lab)
    assert final["postgres/app"] == old and not any(k.startswith("_rotation/pending/") for k in final)
    assert pg_login(lab, old) and (app / "db-password").read_text() == old
    status = json.loads(cli("-i", lab.inventory_path, "--json", "secrets", "status").stdout)["secrets"]
    assert {r["name"]: r["status"] for r in status}["postgres/app"] == "failed"

    # Fixed: the next rotation goes through, on both consumers.
    (app / "broken").unlink()
    fixed = rotate(cli, lab, "postgres/app", "--yes")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    new = values(lab)["postgres/app"]
    assert new != old and pg_login(lab, new) and not pg_login(lab, old)
    assert (app / "db-password").read_text() == new


def test_a_failed_delivery_rolls_back_and_an_incomplete_rollback_is_reported(rot, cli):
    """The second consumer cannot be written (its directory is a file): the first is rolled
    back to the current value, and the one that cannot take even that is named."""
    lab = rot
    assert rotate(cli, lab, "postgres/app", "--yes").returncode == 0
    old = values(lab)["postgres/app"]
    _app_password_consumer(lab)
    app = lab.host("brix").path("/var/lib/app")
    app.mkdir(parents=True, exist_ok=True)
    (app / "db-password").mkdir()  # a directory where the file should go: every write fails

    r = rotate(cli, lab, "postgres/app", "--yes")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "rotation of postgres/app failed" in out and "/var/lib/app/db-password" in out
    assert "ROLLBACK INCOMPLETE on brix: the current value does not verify there" in out
    final = values(lab)
    assert final["postgres/app"] == old and not any(k.startswith("_rotation/pending/") for k in final)
    assert pg_login(lab, old)  # the first consumer, which had the new value, has the old one again


def test_an_unreachable_consumer_stops_the_rotation_before_or_rolls_it_back_during(rot, cli):
    lab = rot
    assert rotate(cli, lab, "postgres/app", "--yes").returncode == 0
    old = values(lab)["postgres/app"]
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    data = yaml.safe_load(policy.read_text())
    data["secrets"]["postgres/app"]["consumers"].append(
        {"host": "nixtv-player", "file": {"path": "/var/lib/app/db-password", "mode": "0600"}}
    )
    policy.write_text(yaml.safe_dump(data))

    # Down before the run: nothing is generated or delivered anywhere.
    lab.stop_host("nixtv-player")
    r = rotate(cli, lab, "postgres/app", "--yes")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not rotated: consumer host(s) nixtv-player unreachable" in r.stdout + r.stderr
    assert values(lab)["postgres/app"] == old and pg_login(lab, old)
    lab.start_host("nixtv-player")

    # Down in the middle (after the pending value is stored, before delivery): brix,
    # which got the new value, is rolled back; nixtv-player is named as not rolled back.
    first = cli.start("-i", lab.inventory_path, "secrets", "rotate", "postgres/app", "--yes",
                      env={"INFRATOOL_FAULT": "stored:stop"})  # fmt: skip
    try:
        wait_stopped(first)
        lab.stop_host("nixtv-player")
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 1, out + err
    assert "rotation of postgres/app failed" in out + err and "nixtv-player" in out + err
    assert "ROLLBACK INCOMPLETE on nixtv-player" in out + err
    final = values(lab)
    assert final["postgres/app"] == old and not any(k.startswith("_rotation/pending/") for k in final)
    assert pg_login(lab, old)


def test_canary_value_never_leaks(rot, cli, tmp_path, _private_audit_log):
    lab = rot
    with both_ends(lab, cli, tmp_path / "execs") as seen:
        plan = rotate(seen.cli, lab, "--all", "--dry-run")
        run = seen.cli("-i", lab.inventory_path, "-vv", "secrets", "rotate", "--all", "--yes")
        run2 = seen.cli("-i", lab.inventory_path, "-vv", "secrets", "rotate", "--all", "--yes")
    assert run.returncode == 0 and run2.returncode == 0, run.stderr + run2.stderr
    seen.assert_recorded(min_sessions=4)
    assert seen.controller.containing("sops")  # the recorder saw the tools the values pass through
    assert [x for x in seen.hosts.execs if x.argv[0].endswith(b"psql")]
    vals = values(lab)
    canaries = [vals["postgres/app"], vals["tokend/token"], vals["_rotation/previous/postgres/app"]]
    outputs = [plan.stdout, plan.stderr, run.stdout, run.stderr, run2.stdout, run2.stderr]
    logs = [_private_audit_log.read_text()] + [h.sshd_log.read_text() for h in lab.hosts()]
    for canary in canaries:
        assert len(canary) >= 32
        assert not [o for o in outputs + logs if canary in o]
        assert seen.hits(canary) == [], "a secret in some process's argv or environment"
        assert files_containing(tmp_path / "controller-tmp", canary) == []
        for h in lab.hosts():
            assert files_containing(h.path("/tmp"), canary) == []
        assert canary not in (lab.flake_dir / "secrets" / ".rotation-state.yaml").read_text()
        assert canary not in (lab.flake_dir / "secrets" / "lab.yaml").read_text()


def test_two_concurrent_rotations_overlap_one_refuses_one_waits(rot, cli):
    """Two rotations of one file, forced to overlap: the first is stopped while it holds the lock."""
    lab = rot
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    before = values(lab)
    sops_file = lab.flake_dir / "secrets" / "lab.yaml"
    inv = lab.inventory_path
    # The first stops itself right after storing its pending value: mid-rotation, lock held.
    first = cli.start(
        "-i", inv, "secrets", "rotate", "postgres/app", "--yes", env={"INFRATOOL_FAULT": "stored:stop"}
    )
    try:
        wait_stopped(first)
        held = values(lab)
        assert "_rotation/pending/postgres/app" in held  # really mid-way
        assert lock_path(sops_file).read_text().strip() == str(first.pid)

        refused = rotate(cli, lab, "--all", "--yes")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert (
            f"another rotation of {sops_file} is running (pid {first.pid})" in refused.stdout + refused.stderr
        )
        assert values(lab) == held  # the refused run changed nothing

        waiter = cli.start("-i", inv, "secrets", "rotate", "tokend/token", "--yes", "--wait", "120")
        time.sleep(1)
        assert waiter.poll() is None  # waiting for the lock, not refused
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, out + err
        w_out, w_err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, w_out + w_err
    finally:
        for proc in (first,):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
    final = values(lab)  # decrypts: not corrupted
    assert final["postgres/app"] == held["_rotation/pending/postgres/app"]  # the first's value, promoted
    assert final["_rotation/previous/postgres/app"] == before["postgres/app"]
    assert final["_rotation/previous/tokend/token"] == before["tokend/token"]  # the waiter's, after
    assert pg_login(lab, final["postgres/app"]) and tokend_accepts(lab, final["tokend/token"])
    assert not any(k.startswith("_rotation/pending/") for k in final)


def test_bad_input_touches_nothing(rot, cli, tmp_path):
    lab = rot
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    good = policy.read_text()
    sops_file = lab.flake_dir / "secrets" / "lab.yaml"
    cipher = sops_file.read_text()
    logs = SshdLogs(lab)
    cases = [
        (good.replace("generator: password", "generator: nope"), "unknown generator"),
        (good.replace("host: brix", "host: nosuchhost"), "nosuchhost"),
        (good.replace("max_age: 30d", "max_age: 30 days"), "malformed duration"),
    ]
    for text, message in cases:
        policy.write_text(text)
        r = rotate(cli, lab, "--all", "--yes")
        assert r.returncode == 3, r.stderr
        assert message in r.stderr and f"{policy}:" in r.stderr
    policy.write_text(good)
    logs.assert_no_contact()
    assert sops_file.read_text() == cipher

    # Tampered ciphertext: sops's MAC check fails. Exit 3 naming the file; nothing
    # reached any host (sshd logs unchanged: not even a login); the file is untouched.
    tampered = cipher.replace("ENC[AES256_GCM,data:", "ENC[AES256_GCM,data:AAAA", 1)
    assert tampered != cipher
    sops_file.write_text(tampered)
    r = rotate(cli, lab, "--all", "--yes")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "lab.yaml: has been tampered with" in r.stderr, r.stderr
    assert sops_file.read_text() == tampered
    logs.assert_no_contact()
    sops_file.write_text(cipher)

    # No decryption key: the same promises.
    r = rotate(cli, lab, "--all", "--yes", env={"SOPS_AGE_KEY_FILE": str(tmp_path / "none.txt")})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "lab.yaml" in r.stderr and "cannot decrypt" in r.stderr, r.stderr
    assert sops_file.read_text() == cipher
    logs.assert_no_contact()


def test_timer_units_verify_and_nix_parses(lab, cli, tmp_path):
    r = cli(
        "-i",
        lab.inventory_path,
        "timer",
        "install",
        "--dir",
        tmp_path / "units",
        "--on-calendar",
        "Sun 03:00",
        "--age-key-file",
        lab.root / "age.key",
    )
    assert r.returncode == 0, r.stderr
    units = sorted((tmp_path / "units").iterdir())
    assert [u.name for u in units] == ["infratool-rotate.service", "infratool-rotate.timer"]
    service = units[0].read_text()
    for needle in (
        "LoadCredential=sops-age-key:",
        "SOPS_AGE_KEY_FILE=%d/sops-age-key",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "secrets rotate --due --yes",
    ):
        assert needle in service
    timer = units[1].read_text()
    assert "OnCalendar=Sun 03:00" in timer and "Persistent=true" in timer and "RandomizedDelaySec=" in timer
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=no", *map(str, units)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    assert subprocess.run(["systemd-analyze", "calendar", "Sun 03:00"], capture_output=True).returncode == 0
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(units[0])], capture_output=True, text=True
    )
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert exposure <= 2.0, security.stdout[-500:]  # "OK" starts below 4.0; we hold 1.9
    nix = cli("-i", lab.inventory_path, "timer", "render", "--nixos")
    (tmp_path / "m.nix").write_text(nix.stdout)
    nix_parse(tmp_path / "m.nix")
    assert "OnCalendar" in nix.stdout and "LoadCredential" in nix.stdout
    assert (
        cli("-i", lab.inventory_path, "timer", "render", "--on-calendar", "every tuesday-ish").returncode == 3
    )


def test_recover_from_the_mnemonic(rot, cli):
    lab = rot
    assert rotate(cli, lab, "--due", "--yes").returncode == 0
    init = cli("-i", lab.inventory_path, "secrets", "recover", "init", "--to-stdout")
    assert init.returncode == 0, init.stderr
    words = init.stdout.strip()
    assert len(words.split()) == 24
    assert words not in init.stderr
    ok = cli("-i", lab.inventory_path, "secrets", "recover", "check", input=words + "\n")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok   lab.yaml" in ok.stdout

    from mnemonic import Mnemonic

    wrong = Mnemonic("english").generate(256)
    bad = cli("-i", lab.inventory_path, "secrets", "recover", "check", input=wrong + "\n")
    assert bad.returncode == 1 and "FAIL lab.yaml" in bad.stdout and "not a recipient" in bad.stdout

    # A file written without the backup recipient is named.
    other = SopsStore(lab.flake_dir / "secrets")
    other.write("extra.yaml", {"x/y": "value-" + "z" * 10})
    sops_cfg = lab.flake_dir / "secrets" / ".sops.yaml"
    from infratool.onboard import scaffold
    from infratool.secrets import recovery

    _, recipient = recovery.derive_identity(words)
    scaffold.remove_sops_recipient(sops_cfg, recipient)
    other.write("extra.yaml", {"x/y": "value-" + "w" * 10})
    again = cli("-i", lab.inventory_path, "secrets", "recover", "check", input=words + "\n")
    assert again.returncode == 1 and "FAIL extra.yaml" in again.stdout and "ok   lab.yaml" in again.stdout
    garbage = cli("-i", lab.inventory_path, "secrets", "recover", "check", input="not a mnemonic\n")
    assert garbage.returncode == 3


def test_notify_on_failure_and_when_due(rot, cli, tmp_path):
    lab = rot
    inbox = tmp_path / "inbox"
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    data = yaml.safe_load(policy.read_text())
    data["notify"] = {"command": f"cat >> {inbox}", "events": ["failure", "due"]}
    policy.write_text(yaml.safe_dump(data))

    # Never rotated = due: status exits 2 and, with --notify, says so.
    status = cli("-i", lab.inventory_path, "secrets", "status", "--notify")
    assert status.returncode == 2
    assert "due for rotation: postgres/app, tokend/token" in inbox.read_text()

    # The verify sees the new value on stdin: it keeps a copy (to check the message
    # against the rejected value itself) and fails, so the rotation is rejected.
    data["secrets"]["tokend/token"]["consumers"][0]["verify"] = "cat >> /var/lib/tokend/seen; exit 1"
    policy.write_text(yaml.safe_dump(data))
    r = rotate(cli, lab, "tokend/token", "--yes")
    assert r.returncode == 1
    text = inbox.read_text()
    assert "rotation of tokend/token failed" in text
    rejected = lab.host("slax").path("/var/lib/tokend/seen").read_text().splitlines()[0]
    assert len(rejected) >= 32
    assert rejected not in text  # the message names the failure, never the rejected value
    # A failed *first* rotation: nothing to roll back to, and nothing is kept.
    assert "no previous value to roll back to (first rotation)" in r.stdout + r.stderr
    held = values(lab)
    assert "tokend/token" not in held and not any(k.startswith("_rotation/pending/") for k in held)
