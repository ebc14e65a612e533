"""The rotation lock: exclusive, reports the holder, waits, and dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infratool.errors import InputError, LockedError
from infratool.rotation.lock import lock_path, rotation_lock


def test_second_lock_attempt_is_refused_naming_file_and_pid(tmp_path: Path) -> None:
    file = tmp_path / "db.yaml"
    with rotation_lock(file) as held:
        assert held == tmp_path / ".db.yaml.lock"
        with pytest.raises(LockedError) as exc, rotation_lock(file):
            pass
        assert str(exc.value) == f"another rotation of {file} is running (pid {os.getpid()})"
    # Released: the next one gets it.
    with rotation_lock(file):
        pass


def test_locks_are_per_file(tmp_path: Path) -> None:
    """Holding a.yaml's lock does not block b.yaml's, and each still refuses a second holder."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    with rotation_lock(a) as held_a, rotation_lock(b) as held_b:
        assert held_a != held_b
        assert held_a.read_text() == held_b.read_text() == f"{os.getpid()}\n"
        for file in (a, b):
            with (
                pytest.raises(LockedError, match=f"another rotation of {file} is running"),
                rotation_lock(file),
            ):
                pass


def test_waiting_for_a_holder_that_finishes(tmp_path: Path) -> None:
    file = tmp_path / "db.yaml"
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with rotation_lock(file):
            taken.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait(5)
    threading.Timer(0.2, release.set).start()
    start = time.monotonic()
    with rotation_lock(file, wait=5):
        assert time.monotonic() - start >= 0.15
    thread.join()


def test_wait_expires(tmp_path: Path) -> None:
    file = tmp_path / "db.yaml"
    with rotation_lock(file):
        start = time.monotonic()
        with pytest.raises(LockedError), rotation_lock(file, wait=0.3):
            pass
        assert 0.25 <= time.monotonic() - start < 3


def test_a_lock_held_by_a_killed_process_is_free(tmp_path: Path) -> None:
    file = tmp_path / "db.yaml"
    code = (
        "import sys, time\n"
        "from infratool.rotation.lock import rotation_lock\n"
        "with rotation_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(file)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"\(pid {child.pid}\)"), rotation_lock(file):
            pass
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        with rotation_lock(file, wait=2):  # the kernel dropped the flock with the process
            assert lock_path(file).read_text().strip() == str(os.getpid())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_lock_dir_override(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    with rotation_lock(tmp_path / "db.yaml", lock_dir=locks) as held:
        assert held == locks / ".db.yaml.lock"


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """Issue 13.8: a `.db.yaml.lock -> victim` committed to the repo must not truncate the victim."""
    victim = tmp_path / "victim"
    victim.write_text("root's precious file\n")
    file = tmp_path / "db.yaml"
    lock_path(file).symlink_to(victim)
    with pytest.raises(InputError, match="symlink"), rotation_lock(file):
        pass
    assert victim.read_text() == "root's precious file\n"
    # A dangling link (the target does not exist yet) must not be created either.
    dangling = tmp_path / "created-by-the-link"
    other = tmp_path / "other.yaml"
    lock_path(other).symlink_to(dangling)
    with pytest.raises(InputError, match="symlink"), rotation_lock(other):
        pass
    assert not dangling.exists()


def test_a_lock_file_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo_file, dir_file = tmp_path / "fifo.yaml", tmp_path / "dir.yaml"
    os.mkfifo(lock_path(fifo_file))
    lock_path(dir_file).mkdir()
    start = time.monotonic()
    for file in (fifo_file, dir_file):
        with pytest.raises(InputError, match="not a regular file"), rotation_lock(file):
            pass
    assert time.monotonic() - start < 2
