"""The lab is a separate package: normal use of infratool never imports it (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_infratool_and_every_task_module_load_without_the_lab() -> None:
    code = (
        "import sys, infratool.cli, infratool.runner\n"
        "from infratool.tasks.base import load_all\n"
        "load_all()\n"
        "print(sorted(m for m in sys.modules if m.startswith('infratool_lab')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_infratool_distribution_does_not_ship_the_lab() -> None:
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert main["tool"]["setuptools"]["packages"]["find"]["include"] == ["infratool", "infratool.*"]
    assert not (ROOT / "infratool" / "lab").exists()
    lab = tomllib.loads((ROOT / "lab" / "pyproject.toml").read_text())
    assert lab["project"]["name"] == "infratool-lab"
    assert "infratool" in lab["project"]["dependencies"]
