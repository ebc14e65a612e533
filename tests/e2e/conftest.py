"""Helpers for end-to-end tests: run the real CLI as a subprocess against a lab."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args, input=None, env=None)``: run ``python -m infratool`` and capture its output.

    Its TMPDIR is ``tmp_path/"controller-tmp"``, so tests can check that
    nothing secret was left in the controller's temp dir.
    """
    controller_tmp = tmp_path / "controller-tmp"

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        controller_tmp.mkdir(exist_ok=True)
        full_env = {**os.environ, "NO_COLOR": "1", "TMPDIR": str(controller_tmp), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "infratool", *map(str, args)],
            input=input, capture_output=True, text=True, env=full_env, cwd=tmp_path, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    return run


@contextmanager
def sample_ps(interval: float = 0.02) -> Iterator[list[str]]:
    """Collect every process command line seen while the block runs.

    Lab hosts share the controller's pid namespace, so one sampler sees the
    controller's processes and every remote session's at once.
    """
    seen: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if raw:
                    seen.append(raw.replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain ``needle``."""
    hits = []
    data = needle.encode()
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and data in path.read_bytes():
                hits.append(path)
        except OSError:
            continue
    return hits


@pytest.fixture
def fleet(lab, monkeypatch):
    """The four-host lab plus its flake repo's secrets: ``secrets/.sops.yaml`` and an operator key.

    ``SOPS_AGE_KEY_FILE`` is set for the test (and every ``cli`` call) to the
    lab's operator key, as `infratool lab up` tells an operator to do.
    """
    from infratool.scaffold import ensure_operator_repo

    key = lab.root / "age.key"
    ensure_operator_repo(lab.flake_dir, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    return lab
