"""Read, check and reset the benchmark's state on lab hosts, from the controller.

Lab hosts keep ``/var/lib`` and ``/etc/nix`` in private directories that the
controller can read directly (``LabHost.path``), so resetting and checking
cost no SSH connection and do not disturb the timings.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from spec import BENCH_DIR, NIX_CONF, WORK, Work


@dataclass(frozen=True)
class Stamp:
    """Identity of a file's current version: a rewrite changes the inode or mtime."""

    inode: int
    mtime_ns: int


class HostFiles:
    """The benchmark's files of one lab host, seen from the controller."""

    def __init__(self, name: str, path_of, work: Work = WORK) -> None:
        """``path_of(remote_path)`` maps a host path to the controller's path."""
        self.name = name
        self.path_of = path_of
        self.work = work
        self.pristine_conf = Path(path_of(NIX_CONF)).read_bytes()

    def paths(self) -> list[Path]:
        """Controller paths of every file the work manages."""
        return [Path(self.path_of(f.path)) for f in self.work.files] + [Path(self.path_of(NIX_CONF))]

    def reset(self) -> None:
        """Undo the work: no bench directory, nix.conf as the lab wrote it."""
        shutil.rmtree(self.path_of(BENCH_DIR), ignore_errors=True)
        Path(self.path_of(NIX_CONF)).write_bytes(self.pristine_conf)

    def problems(self) -> list[str]:
        """What differs from the converged state (empty when converged)."""
        found = []
        for f in self.work.files:
            p = Path(self.path_of(f.path))
            if not p.is_file():
                found.append(f"{self.name}: {f.path} missing")
                continue
            if p.read_text() != f.content:
                found.append(f"{self.name}: {f.path} has other content")
            if p.stat().st_mode & 0o7777 != f.mode:
                found.append(f"{self.name}: {f.path} mode {p.stat().st_mode & 0o7777:o}")
        lines = Path(self.path_of(NIX_CONF)).read_text().splitlines()
        for key, value in self.work.settings:
            if f"{key} = {value}" not in lines:
                found.append(f"{self.name}: nix.conf lacks '{key} = {value}'")
        return found

    def stamps(self) -> dict[str, Stamp]:
        """Inode and mtime of every managed file (to prove a no-op rewrote nothing)."""
        out = {}
        for p in self.paths():
            st = p.stat()
            out[str(p)] = Stamp(st.st_ino, st.st_mtime_ns)
        return out
