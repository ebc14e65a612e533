"""Plain helpers shared by the test suites (importable as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOKS = ROOT / "playbooks"


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


def nix_parse(path: str | Path) -> None:
    """Assert that ``nix-instantiate --parse`` accepts the Nix file at ``path``."""
    proc = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def nix_eval(expr: str | Path) -> Any:
    """Evaluate a Nix expression (a string) or file (a Path) strictly, to Python data.

    ``NIX_PATH`` is emptied so nothing outside the expression (no nixpkgs) can leak in.
    """
    target = [str(expr)] if isinstance(expr, Path) else ["-E", expr]
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", *target],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "NIX_PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
