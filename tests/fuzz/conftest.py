"""Fixtures of the fuzz tests: ``cli`` and ``fleet`` from tests/e2e/conftest.py (the lab ones are global)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _e2e_helpers() -> ModuleType:
    """tests/e2e/conftest.py as the module ``infratool_e2e_conftest`` (loaded once per process).

    Its fixtures apply only below tests/e2e; loading it under its own name lets
    this directory use the same ``cli`` and ``fleet`` and import ``sample_ps``.
    """
    name = "infratool_e2e_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "e2e" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cli = _e2e_helpers().cli
fleet = _e2e_helpers().fleet
