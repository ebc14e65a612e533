"""The argv recorder the canary tests rely on records what it must: both ends, short processes, env."""

from __future__ import annotations

import os
import subprocess

from exectrace import HostTrace, Trace, traced
from helpers import cli_argv, cli_env


def test_every_exec_on_both_ends_is_recorded_even_a_millisecond_one(lab_factory, tmp_path):
    lab = lab_factory(2)
    marker = "MARKER-" + os.urandom(6).hex()
    with HostTrace(lab, tmp_path / "hosts") as hosts:
        lab_argv = cli_argv("-i", lab.inventory_path, "facts", "--limit", "snix")
        controller = tmp_path / "controller.strace"
        r = subprocess.run(
            traced(lab_argv, controller), capture_output=True, text=True, env=cli_env(tmp_path)
        )
        assert r.returncode == 0, r.stderr
        # A process that lives for a moment, on the host side, with the marker in argv and env.
        ssh = subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(lab.admin_key), "-o", f"UserKnownHostsFile={lab.known_hosts_path}",
             f"root@{lab.host('slax').address}", f"MARK=env-{marker} /bin/true arg-{marker}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ssh.returncode == 0, ssh.stderr
    host_side = hosts.trace
    assert host_side.session_shells(), "no session shell recorded on the hosts"
    true_runs = [x for x in host_side.execs if x.path == b"/bin/true"]
    assert [x.argv for x in true_runs] == [(b"/bin/true", f"arg-{marker}".encode())]
    assert f"MARK=env-{marker}".encode() in true_runs[0].env
    assert len(host_side.containing(marker)) == 2  # the session shell and /bin/true
    assert host_side.max_concurrent(host_side.session_shells()) >= 1

    mine = Trace.read([controller])
    assert mine.execs and mine.execs[0].argv[1:4] == (b"-m", b"infratool", b"-i")
