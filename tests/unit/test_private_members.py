"""No module reaches into another's private members (``store._run``): a public method says what it needs."""

from __future__ import annotations

import ast
from pathlib import Path

from infratool.secrets.store import SopsStore

ROOT = Path(__file__).resolve().parents[2] / "infratool"


def _is_store(node: ast.expr) -> bool:
    """A store by its usual names (``store``, ``self.store``, ``SopsStore(...)``), not any ``x._load``."""
    if isinstance(node, ast.Call):
        return _is_store(node.func)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "store" in name.lower()


def test_no_module_outside_the_store_calls_a_private_sopsstore_method() -> None:
    private = {name for name in vars(SopsStore) if name.startswith("_") and not name.startswith("__")}
    found = []
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "secrets" / "store.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in private and _is_store(node.value):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: .{node.attr}")
    assert private, "SopsStore has private methods to look for"
    assert found == []
