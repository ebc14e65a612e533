"""Time one command: wall seconds, CPU seconds and peak memory of its process tree.

``os.wait4`` returns the finished child's resource usage: user+system CPU of
the child and every descendant it waited for (Ansible's forks, ssh clients),
and ``ru_maxrss``, the largest resident set among them, in KiB on Linux.

Linux keeps a process's peak RSS across ``exec``: a child forked from the
benchmark starts with the benchmark's own peak, which would then be a floor
under every tool's figure. So the command runs under GNU ``/usr/bin/time``
(a few hundred KiB, forked fresh) when it exists, and the peak is the one
it reports for its own child; without it, ``ru_maxrss`` is used, floor and all.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One timed run of a command."""

    wall: float
    cpu: float
    """User + system seconds of the process tree (controller side only)."""
    maxrss_kib: int
    exit: int
    output: str
    """Last lines of stdout+stderr, for error messages."""


def run(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Sample:
    """Run ``argv`` with stdin closed; return its :class:`Sample`. Output goes to ``log``."""
    log = log or Path(os.devnull)
    gnu_time = Path("/usr/bin/time")
    peak_file = None
    if gnu_time.exists():
        fd, peak_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        argv = [str(gnu_time), "-f", "%M", "-o", peak_file, *argv]
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    tail = ""
    if log != Path(os.devnull):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    maxrss = usage.ru_maxrss
    if peak_file is not None:
        reported = Path(peak_file).read_text().split()
        os.unlink(peak_file)
        if reported and reported[-1].isdigit():
            maxrss = int(reported[-1])
    return Sample(wall, usage.ru_utime + usage.ru_stime, maxrss, proc.returncode, tail)


@dataclass(frozen=True)
class Stats:
    """Summary of repeated samples."""

    median: float
    min: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        """Median, minimum and count of ``values``."""
        return cls(statistics.median(values), min(values), len(values))
