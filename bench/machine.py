"""What the numbers were measured on: CPU, memory, load, versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "not found"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def describe() -> dict[str, str]:
    """Machine and controller-side software, as short strings."""
    from importlib.metadata import version

    load = os.getloadavg()
    return {
        "cpu": f"{_cpu_model()}, {os.cpu_count()} cores",
        "memory": f"{_mem_gib():.0f} GiB",
        "kernel": platform.release(),
        "os": _cmd(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "load": " ".join(f"{x:.2f}" for x in load),
        "python (infratool)": platform.python_version(),
        "infratool": version("infratool"),
        "fabric / paramiko (infratool)": f"{version('fabric')} / {version('paramiko')}",
        "openssh client": _cmd(["ssh", "-V"]),
        "sshd (lab hosts)": _cmd(["sh", "-c", "dpkg-query -W -f '${Version}' openssh-server"]),
        "interpreter": sys.executable,
    }
