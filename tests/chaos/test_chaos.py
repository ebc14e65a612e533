"""Chaos on a running fleet: a host dies mid-run, a disk fills up, a host is slow or hangs.

Each test runs the real CLI against the lab and then breaks one host for real
(its sshd and sessions killed, a 64 KiB tmpfs filled, a command that never
ends, every process of the host frozen with SIGSTOP). The broken host is
reported, the others complete, nothing is left half-written, and the next run
converges. (kill -9 of the controller during rotations: tests/e2e.)
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import yaml
from helpers import processes_with, wait_for
from infratool_lab import Lab

OTHERS = ("snix", "slax", "nixtv-player")


def playbook(tmp_path: Path, tasks: list[dict], name: str = "pb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


def test_sshd_killed_mid_run_that_host_reported_others_complete_rerun_converges(lab, cli, tmp_path) -> None:
    token = secrets.token_hex(4)
    pb = playbook(
        tmp_path,
        [
            {
                "task": "files.content",
                "with": {"path": "/var/lib/chaos/marker", "content": "before the slow step\n"},
            },
            # Slow enough to be caught in flight; `creates` makes it converge once done.
            {
                "task": "command",
                "with": {
                    "command": f"sleep 2; touch /var/lib/chaos/done-{token}",
                    "creates": f"/var/lib/chaos/done-{token}",
                },
            },
            {"task": "files.content", "with": {"path": "/var/lib/chaos/after", "content": "after it\n"}},
        ],
    )
    run = cli.start("-i", lab.inventory_path, "run", str(pb), "--yes", "--forks", "4")
    # Every host is inside the slow command: kill brix's sshd and sessions under the run.
    # (The command text, not just the token: the facts script names the `creates` path too.)
    wait_for(
        lambda: len(processes_with(f"sleep 2; touch /var/lib/chaos/done-{token}")) >= 4,
        what="the slow command on every host",
    )
    threading.Thread(target=lab.stop_host, args=("brix",)).start()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1, out + err
    assert "Traceback" not in err
    assert "brix: connection lost" in err, err
    for name in OTHERS:
        host = lab.host(name)
        assert (
            host.path(f"/var/lib/chaos/done-{token}").exists() and host.path("/var/lib/chaos/after").exists()
        )
        assert not list(host.path("/var/lib/chaos").glob(".infratool.*"))
    brix = lab.host("brix")
    assert brix.path("/var/lib/chaos/marker").exists()  # done before the kill
    assert not brix.path("/var/lib/chaos/after").exists()  # skipped after it

    # brix comes back: the next run finishes it, and only it.
    lab.start_host("brix")
    rerun = cli("-i", lab.inventory_path, "run", pb, "--yes")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "brix: 2 change(s)" in rerun.stdout and "snix: no changes" in rerun.stdout, rerun.stdout
    assert cli("-i", lab.inventory_path, "plan", pb, "--detailed-exitcode").returncode == 0
    assert brix.path("/var/lib/chaos/after").read_text() == "after it\n"


def test_full_disk_during_a_write_keeps_the_original_and_leaves_no_temp_file(lab, cli, tmp_path) -> None:
    # A 64 KiB tmpfs in brix's own mount namespace, holding the file, then filled
    # so that only part of the new content fits.
    lab.exec(
        "brix",
        "mkdir -p /var/lib/small && mount -t tmpfs -o size=64k tmpfs /var/lib/small && "
        "printf 'original\\n' > /var/lib/small/app.conf && chown nobody:nogroup /var/lib/small/app.conf && "
        "chmod 640 /var/lib/small/app.conf && head -c 45056 /dev/zero > /var/lib/small/filler",
        check=True,
    )
    # The tmpfs exists only inside brix's mount namespace: look at it from there.
    inode = lab.exec("brix", "stat -c %i /var/lib/small/app.conf", check=True).stdout.decode().strip()
    pb = playbook(
        tmp_path,
        [{"task": "files.content", "with": {"path": "/var/lib/small/app.conf", "content": "new\n" * 8192}}],
    )
    r = cli("-i", lab.inventory_path, "run", pb, "--yes")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "brix: write /var/lib/small/app.conf failed" in r.stderr and "No space left on device" in r.stderr
    for name in OTHERS:  # same file, room to spare: done
        assert lab.host(name).path("/var/lib/small/app.conf").read_text() == "new\n" * 8192
    listing = (
        lab.exec(
            "brix",
            "ls -A /var/lib/small; stat -c '%a %U %G %i' /var/lib/small/app.conf; "
            "cat /var/lib/small/app.conf",
            check=True,
        )
        .stdout.decode()
        .split("\n")
    )
    assert listing[:2] == ["app.conf", "filler"], listing  # no .infratool.* temp file
    assert listing[2] == f"640 nobody nogroup {inode}"  # the same file, untouched
    assert listing[3] == "original"
    # Space again: the next run converges.
    lab.exec("brix", "rm /var/lib/small/filler", check=True)
    assert cli("-i", lab.inventory_path, "run", pb, "--yes").returncode == 0
    assert lab.exec("brix", "cat /var/lib/small/app.conf").stdout.decode() == "new\n" * 8192


def test_slow_host_times_out_fast_and_its_command_is_stopped(lab, cli, tmp_path) -> None:
    token = secrets.token_hex(4)
    pb = playbook(
        tmp_path,
        [
            {
                "task": "command",
                "hosts": "brix",
                "with": {
                    "command": f"sleep 300; touch /var/lib/slow-{token}",
                    "creates": f"/var/lib/slow-{token}",
                },
            },
            {"task": "files.content", "with": {"path": "/var/lib/chaos/marker", "content": "x\n"}},
        ],
    )
    start = time.monotonic()
    r = cli("-i", lab.inventory_path, "run", pb, "--yes", "--timeout", "3", timeout=120)
    elapsed = time.monotonic() - start
    assert r.returncode == 1, r.stdout + r.stderr
    assert "brix: command failed (exit 124): timed out after 3 s" in r.stderr
    assert "Traceback" not in r.stderr
    assert elapsed < 60, elapsed  # not the 300 s of the command
    for name in OTHERS:
        assert lab.host(name).path("/var/lib/chaos/marker").exists()
    assert not lab.host("brix").path("/var/lib/chaos/marker").exists()  # skipped after its failure
    # The timed-out command is gone from the host: it cannot finish its change later.
    wait_for(
        lambda: not processes_with(f"sleep 300; touch /var/lib/slow-{token}"), timeout=15, what="the kill"
    )


@contextmanager
def frozen(lab: Lab, name: str) -> Iterator[None]:
    """Every process of host ``name`` (sshd, its sessions, their commands) stopped with SIGSTOP."""
    sshd = int(lab.host(name).root.joinpath("sshd.pid").read_text())
    ns = os.readlink(f"/proc/{sshd}/ns/mnt")
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") == ns:
                members.append(int(pid))
        except OSError:
            continue
    for pid in members:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in members:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_hung_host_is_given_up_on_by_the_controller_deadline(lab, cli, tmp_path) -> None:
    """A host that stops answering at all (not even its own timeout can report) still fails fast."""
    token = secrets.token_hex(4)
    pb = playbook(
        tmp_path,
        [
            {
                "task": "command",
                "with": {
                    "command": f"sleep 2; touch /var/lib/hang-{token}",
                    "creates": f"/var/lib/hang-{token}",
                },
            }
        ],
    )
    run = cli.start("-i", lab.inventory_path, "run", str(pb), "--yes", "--timeout", "3")
    wait_for(
        lambda: len(processes_with(f"sleep 2; touch /var/lib/hang-{token}")) >= 4,
        what="the command everywhere",
    )
    with frozen(lab, "brix"):
        start = time.monotonic()
        out, err = run.communicate(timeout=120)
        elapsed = time.monotonic() - start
    assert run.returncode == 1, out + err
    assert "brix: command failed (exit 124): timed out after 3 s" in err
    assert elapsed < 30, elapsed
    for name in OTHERS:
        assert lab.host(name).path(f"/var/lib/hang-{token}").exists()
