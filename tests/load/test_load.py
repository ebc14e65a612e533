"""Load: a full baseline run over 64 lab hosts with ``--forks 16``; every host correct; memory recorded.

``--forks`` is measured, not assumed: strace on every host's sshd records when
each SSH session's shell starts and ends (tests/exectrace.py), and the most
sessions open at once across the fleet must be at least 2 (it ran in
parallel) and at most 16 (the bound held).

The controller's peak RSS comes from ``wait4`` on the CLI's own process (its
``ru_maxrss``), so nothing else the test process ever started is counted. It
is stored with ``record_property`` and printed in the session's terminal
summary ("load measurements"), also in JUnit XML.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from exectrace import HostTrace
from helpers import PLAYBOOKS, cli_argv, cli_env
from infratool_lab import Lab

BASELINE = PLAYBOOKS / "baseline.yaml"
HOSTS, FORKS = 64, 16
MANAGED_BY = (
    "This host is managed by infratool. Local changes to managed files are\n"
    "overwritten on the next run; see the fleet repo's playbooks/.\n"
)


def run_measured(lab: Lab, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """Run the CLI; return its result, wall seconds and peak RSS in KiB (its own, via wait4)."""
    env = cli_env(tmp_path)
    argv = cli_argv("-i", lab.inventory_path, *args)
    # Output to files, not pipes: communicate() would reap the child before wait4 sees it.
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=tmp_path)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())
    return result, elapsed, usage.ru_maxrss


def test_baseline_over_64_hosts_with_16_forks(lab_factory, tmp_path, record_property) -> None:
    lab = lab_factory(HOSTS)
    logins_before = {h.name: h.sshd_log.read_text().count("Accepted publickey") for h in lab.hosts()}
    result, elapsed, rss_kib = run_measured(
        lab, tmp_path, "run", str(BASELINE), "--yes", "--forks", str(FORKS)
    )
    record_property("hosts", HOSTS)
    record_property("forks", FORKS)
    record_property("wall_seconds", round(elapsed, 1))
    record_property("controller_peak_rss_mib", round(rss_kib / 1024, 1))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Plan: {2 * HOSTS} change(s) on {HOSTS} of {HOSTS} target(s)" in result.stdout

    hosts = lab.hosts()
    assert len(hosts) == HOSTS
    for host in hosts:
        conf = host.path("/etc/nix/nix.conf").read_text()
        assert "experimental-features = nix-command flakes\n" in conf, host.name
        assert "auto-optimise-store = true\n" in conf, host.name
        assert "sandbox = false" in conf, host.name  # lines it does not manage are kept
        marker = host.path("/var/lib/infratool/managed-by")
        assert marker.read_text() == MANAGED_BY, host.name
        assert marker.stat().st_mode & 0o777 == 0o644, host.name
        assert not list(marker.parent.glob(".infratool.*")), host.name
        # One SSH connection per host for the whole run.
        logins = host.sshd_log.read_text().count("Accepted publickey") - logins_before[host.name]
        assert logins == 1, (host.name, logins)

    # Converged at scale: a second look plans nothing anywhere. This run is traced
    # (strace slows it, so it is not the one timed): every host's facts session is
    # recorded, and never more than --forks of them are open at once.
    with HostTrace(lab, tmp_path / "strace") as sessions:
        again, _, _ = run_measured(lab, tmp_path, "--json", "plan", str(BASELINE), "--forks", str(FORKS))
    shells = sessions.trace.session_shells()
    concurrent = sessions.trace.max_concurrent(shells)
    record_property("max_concurrent_sessions", concurrent)
    assert set(sessions.pids) == {h.name for h in hosts}
    assert len(shells) >= HOSTS, len(shells)
    assert 2 <= concurrent <= FORKS, concurrent
    assert again.returncode == 0, again.stderr[-3000:]
    plan = json.loads(again.stdout)
    assert len(plan["hosts"]) == HOSTS and plan["changes"] == [] and not plan["failures"]
    # A sanity bound, not a benchmark (docs/performance.md has those): a 64-host run
    # of a Python controller stays well under a few hundred MiB.
    assert rss_kib < 400 * 1024, rss_kib
