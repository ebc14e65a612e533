"""Issues 13.11 and 22.5: the audit log cannot be turned against root, and a run always leaves a record.

Real CLI processes against the lab: ``--audit-log`` pointing at a symlink, a
FIFO, ``/dev/full`` or a directory is bad input (exit 3) before any host is
contacted; an existing 0644 log is tightened to 0600; a run killed with
``kill -9`` mid-apply leaves its ``started`` record; a write that fails after
the changes were applied is reported, and the run's result and exit code stand.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from helpers import PLAYBOOKS

BASELINE = PLAYBOOKS / "baseline.yaml"
MARKER = "/var/lib/infratool/managed-by"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_audit_log_that_is_not_a_regular_file_is_exit_3_before_anything(lab, cli, tmp_path):
    logs = {h.name: h.sshd_log.read_text() for h in lab.hosts()}
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    link = tmp_path / "audit-link.jsonl"
    link.symlink_to(victim)
    fifo = tmp_path / "audit-fifo"
    os.mkfifo(fifo)
    for target in (link, fifo, Path("/dev/full"), tmp_path):
        for command in (["plan", BASELINE], ["run", BASELINE, "--yes"]):
            r = cli("-i", lab.inventory_path, "--audit-log", target, *command, timeout=60)
            assert r.returncode == 3, (target, r.stderr)
            assert f"audit log {target}" in r.stderr and "Traceback" not in r.stderr
    assert victim.read_text() == "root's file\n"
    for h in lab.hosts():
        assert not h.path(MARKER).exists(), f"{h.name} was changed"
        assert h.sshd_log.read_text() == logs[h.name], f"{h.name} was contacted"


def test_a_0644_log_is_tightened_and_kill_9_leaves_the_started_record(lab, cli, tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    log.chmod(0o644)
    killed = cli(
        "-i", lab.inventory_path, "--audit-log", log, "run", BASELINE, "--yes",
        env={"INFRATOOL_FAULT": "after-change-1"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert log.stat().st_mode & 0o777 == 0o600
    [started] = records(log)
    assert started["event"] == "started" and started["command"] == "run"
    assert any(c["description"] for c in started["changes"]) and set(started["hosts"]) >= {"snix", "brix"}
    # The next run converges; a run with changes records its start and its outcome under one run id.
    rerun = cli("-i", lab.inventory_path, "--audit-log", log, "run", BASELINE, "--yes")
    assert rerun.returncode == 0, rerun.stderr
    lab.host("snix").path(MARKER).unlink()
    third = cli("-i", lab.inventory_path, "--audit-log", log, "run", BASELINE, "--yes")
    assert third.returncode == 0, third.stderr
    last = [r for r in records(log)[1:] if r["run"] != records(log)[1]["run"]]
    assert [r["event"] for r in last] == ["started", "finished"]
    assert last[0]["run"] == last[1]["run"] != started["run"]
    assert [c["host"] for c in last[0]["changes"]] == ["snix"]
    assert last[1]["exit_code"] == 0 and last[1]["outcome"]["snix"]["status"] == "changed"


def test_a_failing_audit_write_is_reported_and_the_run_result_stands(lab, tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"\n" * 4096)
    limit = 4096  # RLIMIT_FSIZE: every append to the full log fails with EFBIG, after it opened fine

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "infratool", "-i", str(lab.inventory_path), "--audit-log", str(log),
         "run", str(BASELINE), "--yes"],
        capture_output=True, text=True, preexec_fn=cap, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"audit log {log}: cannot write the started record" in proc.stderr
    assert f"audit log {log}: cannot write the finished record" in proc.stderr
    assert lab.host("snix").path(MARKER).exists()
