"""Two runs at once on one host (issue 13 item 9): the per-host run lock and the stale-plan refusal.

Real runs (the CLI in subprocesses) against a real lab host. Without the
lock and the check, playbook A (max-jobs) and playbook B (cores), planned
from the same nix.conf, both said "changed" and one line was lost.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from infratool_lab import Lab

from infratool import hostlock, inventory
from infratool.errors import HostError
from infratool.remote import FileWrite, Remote, StreamedContent

CONF = "/etc/nix/nix.conf"


@pytest.fixture
def lab(lab_factory) -> Lab:
    """One lab host (snix)."""
    return lab_factory(1)


def _book(tmp_path: Path, name: str, settings: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "hosts": "all",
                "tasks": [{"task": "nix.settings", "with": {"settings": settings}}],
            }
        )
    )
    return path


def _start(lab: Lab, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "infratool", "-i", str(lab.inventory_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env=env,
    )


def _conf(lab: Lab) -> str:
    return lab.host("snix").path(CONF).read_text()


@pytest.fixture
def holder(lab: Lab):
    """The run lock of snix, held by another 'run' (this test) until released."""
    host = next(iter(inventory.load(lab.inventory_path)))
    remote = Remote(host)
    held = hostlock.acquire(remote, 0, "test holder")
    yield held
    held.release()
    remote.close()


def test_a_second_run_is_refused_while_the_lock_is_held_and_queues_with_wait(lab, cli, tmp_path, holder):
    book = _book(tmp_path, "a", {"max-jobs": 3})
    before = _conf(lab)
    refused = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "another infratool run is applying changes" in refused.stdout + refused.stderr
    assert "test holder" in refused.stdout + refused.stderr
    assert _conf(lab) == before

    queued = _start(lab, tmp_path, "run", str(book), "--yes", "--wait", "60")
    time.sleep(4)
    assert queued.poll() is None, queued.communicate()[0]  # still waiting for the lock
    assert _conf(lab) == before
    holder.release()
    out = queued.communicate(timeout=60)[0]
    assert queued.returncode == 0, out
    assert "max-jobs = 3" in _conf(lab)


def _until_waiting(proc: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    """Read ``proc``'s output until it says it waits for the run lock (it has planned); the lines read."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "waiting for the run lock" in line:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), "".join(lines)
    assert any("waiting for the run lock" in line for line in lines), "".join(lines)
    return lines


def test_two_runs_planned_together_lose_no_update(lab, tmp_path, holder):
    """A and B plan from the same nix.conf while a third run holds the lock: one applies, the other refuses."""
    books = {
        "max-jobs = 3": _book(tmp_path, "a", {"max-jobs": 3}),
        "cores = 2": _book(tmp_path, "b", {"cores": 2}),
    }
    runs = {
        line: _start(lab, tmp_path, "run", str(book), "--yes", "--wait", "120")
        for line, book in books.items()
    }
    # Both have planned (from the same nix.conf) and wait for the lock.
    head = {line: _until_waiting(p) for line, p in runs.items()}
    holder.release()
    outs = {line: "".join(head[line]) + p.communicate(timeout=120)[0] for line, p in runs.items()}
    conf = _conf(lab)
    for line, p in runs.items():
        # No update is lost: a run that said it applied its line has it in the file.
        if p.returncode == 0:
            assert line in conf, f"{line!r} was reported applied but is gone:\n{outs[line]}"
        else:
            assert "since the plan read it (stale plan)" in outs[line], outs[line]
    assert sorted(p.returncode for p in runs.values()) == [0, 1], outs
    # The refused run, run again, converges: both lines survive.
    again = next(line for line, p in runs.items() if p.returncode)
    rerun = _start(lab, tmp_path, "run", str(books[again]), "--yes")
    assert rerun.wait(60) == 0, rerun.communicate()[0]
    conf = _conf(lab)
    assert "max-jobs = 3" in conf and "cores = 2" in conf


def test_a_run_killed_with_kill_9_does_not_leave_the_host_locked(lab, cli, tmp_path):
    code = (
        "import sys, time\n"
        "from infratool import hostlock, inventory\n"
        "from infratool.remote import Remote\n"
        f"h = next(iter(inventory.load({str(lab.inventory_path)!r})))\n"
        "hostlock.acquire(Remote(h), 0, 'doomed run')\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    doomed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert doomed.stdout.readline().strip() == "held"
    book = _book(tmp_path, "a", {"max-jobs": 3})
    refused = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert "doomed run" in refused.stdout + refused.stderr
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    time.sleep(1)
    run = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert not lab.host("snix").path(hostlock.LOCK_PATH).is_symlink()


def test_a_stale_lock_of_a_dead_holder_is_taken_over(lab, cli, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    lab.exec(
        "snix", f"mkdir -p /var/lib/infratool && ln -s '{dead.pid} 1 {boot} crashed run' {hostlock.LOCK_PATH}"
    )
    run = cli("-i", lab.inventory_path, "run", _book(tmp_path, "a", {"max-jobs": 3}), "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "max-jobs = 3" in _conf(lab)


def test_a_write_script_that_carries_the_lock_holds_it_while_it_writes_and_drops_it(lab):
    """hostlock.put_files_locked: lock, writes and release in one script; the lock is real meanwhile."""
    host = next(iter(inventory.load(lab.inventory_path)))
    sent_first, go_on = threading.Event(), threading.Event()
    data = b"a" * 10 + b"b" * 10

    def chunks():
        yield data[:10]
        sent_first.set()
        go_on.wait(60)  # the script is now inside its writes, waiting for the rest
        yield data[10:]

    content = StreamedContent(len(data), hashlib.sha256(data).hexdigest(), chunks, "test source")
    errors: list[BaseException] = []

    def write() -> None:
        with Remote(host) as remote:
            try:
                hostlock.put_files_locked(
                    remote, [FileWrite("/var/lib/lockw/f", content, 0o600)], "writer run"
                )
            except BaseException as exc:
                errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert sent_first.wait(60)
        # The script takes the lock before it reads its stdin; wait until it has (not a timing assertion).
        lock = lab.host("snix").path(hostlock.LOCK_PATH)
        deadline = time.monotonic() + 60
        while not lock.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "writer run" in os.readlink(lock)
        with Remote(host) as other, pytest.raises(HostError, match="writer run"):
            hostlock.acquire(other, 0, "second run")
        assert not lab.host("snix").path("/var/lib/lockw/f").exists()
    finally:
        go_on.set()
        writer.join(60)
    assert not errors, errors
    assert lab.host("snix").path("/var/lib/lockw/f").read_bytes() == data
    assert not lab.host("snix").path(hostlock.LOCK_PATH).is_symlink()


def test_a_write_script_that_carries_the_lock_refuses_a_busy_host_and_writes_nothing(lab, holder):
    host = next(iter(inventory.load(lab.inventory_path)))
    with Remote(host) as remote, pytest.raises(HostError, match=r"another infratool run.*test holder"):
        hostlock.put_files_locked(remote, [FileWrite("/var/lib/lockw2/f", b"x")], "second run")
    assert not lab.host("snix").path("/var/lib/lockw2/f").exists()
    assert "test holder" in os.readlink(lab.host("snix").path(hostlock.LOCK_PATH))


def test_a_command_before_the_last_write_takes_the_lock_first(lab, cli, tmp_path, holder):
    """files.absent runs `rm` before the batched write: the lock is asked for before the `rm`, so nothing happens."""
    lab.exec("snix", "mkdir -p /var/lib/lockw3 && echo keep > /var/lib/lockw3/gone", check=True)
    book = tmp_path / "c.yaml"
    book.write_text(
        yaml.safe_dump(
            {
                "name": "c",
                "hosts": "all",
                "tasks": [
                    {"task": "files.absent", "with": {"path": "/var/lib/lockw3/gone"}},
                    {"task": "files.content", "with": {"path": "/var/lib/lockw3/new", "content": "x"}},
                ],
            }
        )
    )
    refused = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "another infratool run is applying changes" in refused.stdout + refused.stderr
    assert lab.host("snix").path("/var/lib/lockw3/gone").read_text() == "keep\n"
    assert not lab.host("snix").path("/var/lib/lockw3/new").exists()
    holder.release()
    done = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not lab.host("snix").path("/var/lib/lockw3/gone").exists()
    assert lab.host("snix").path("/var/lib/lockw3/new").read_text() == "x"
    assert not lab.host("snix").path(hostlock.LOCK_PATH).is_symlink()
