"""The peers' virtualenv (pyinfra, ansible-core, Fabric), made on demand.

The peers are benchmark-only: they live in ``bench/.venv-peers`` (ignored by
git), never in infratool's environment. ansible-core 2.21 needs Python ≥ 3.12,
so the newest interpreter found is used: ``$PEERS_PYTHON``, then pyenv's
3.12+, then ``python3.13``/``python3.12`` on PATH, else this interpreter (pip
then picks the newest ansible-core that still supports it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv-peers"
PACKAGES = ("pyinfra", "ansible-core", "fabric", "py-spy")


def _version_of(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, check=True
    )
    major, minor = out.stdout.split()
    return int(major), int(minor)


def find_python() -> str:
    """The interpreter to build the peers' venv with (see the module docstring)."""
    if os.environ.get("PEERS_PYTHON"):
        return os.environ["PEERS_PYTHON"]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(f"{pyenv_root}/versions/3.1[2-9]*/bin/python3"))
    candidates += [p for p in (shutil.which("python3.13"), shutil.which("python3.12")) if p]
    best = None
    for python in candidates:
        try:
            version = _version_of(python)
        except (OSError, subprocess.CalledProcessError, ValueError):
            continue
        if version >= (3, 12) and (best is None or version > best[0]):
            best = (version, python)
    return best[1] if best else sys.executable


def installed() -> bool:
    """Whether the peers' venv is complete (``ensure`` would install nothing)."""
    return all((VENV / "bin" / exe).exists() for exe in ("pyinfra", "ansible-playbook", "py-spy", "python"))


def ensure(log=print) -> Path:
    """Create the peers' venv if missing or incomplete; return its bin directory."""
    bin_dir = VENV / "bin"
    if installed():
        return bin_dir
    python = find_python()
    log(f"bench: creating {VENV} with {python} and installing {' '.join(PACKAGES)}")
    subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES],
        check=True,
    )
    return bin_dir


def versions(bin_dir: Path) -> dict[str, str]:
    """Installed versions of the peer packages (and their paramiko)."""
    code = (
        "import importlib.metadata as m, sys\n"
        "print('python', '.'.join(map(str, sys.version_info[:3])))\n"
        "for p in ('pyinfra', 'ansible-core', 'fabric', 'paramiko'):\n"
        "    print(p, m.version(p))\n"
    )
    out = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())
