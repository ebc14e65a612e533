"""Playbook variables: ``{{ name }}`` in task parameters, from ``vars:`` and ``-e``.

Deliberately small (no expressions, no filters): a parameter that is exactly
``{{ name }}`` takes the variable's value with its type (a list stays a
list, a number a number); inside a longer string the value is inserted as
text. An unknown name is bad input with a did-you-mean, at the parameter's
line. Variables are not secrets: a secret belongs in sops.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infratool import yamlsrc
from infratool.errors import InputError
from infratool.suggest import did_you_mean

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
PLACEHOLDER = re.compile(r"\{\{\s*(" + _NAME + r")\s*\}\}")
_WHOLE = re.compile(r"^\s*\{\{\s*(" + _NAME + r")\s*\}\}\s*$")


def render(value: Any, variables: dict[str, Any], error: Callable[[str], InputError]) -> Any:
    """``value`` with every placeholder replaced (recursively through lists and mappings)."""
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return _lookup(whole.group(1), variables, error)
        return PLACEHOLDER.sub(lambda m: str(_lookup(m.group(1), variables, error)), value)
    if isinstance(value, list):
        return [render(v, variables, error) for v in value]
    if isinstance(value, dict):
        return {k: render(v, variables, error) for k, v in value.items()}
    return value


def _lookup(name: str, variables: dict[str, Any], error: Callable[[str], InputError]) -> Any:
    if name not in variables:
        known = ", ".join(sorted(variables)) or "none"
        raise error(f"unknown variable {name!r}{did_you_mean(name, variables)} (defined: {known})")
    return variables[name]


def check_vars(data: object, path: Path, line: int | None) -> dict[str, Any]:
    """A playbook's ``vars:`` mapping (names must be identifiers)."""
    if data is None:
        return {}
    data = yamlsrc.mapping(data, "'vars' must be a mapping of name → value", path, line)
    for key in data:
        if not isinstance(key, str) or not re.fullmatch(_NAME, key):
            raise InputError(
                f"variable name {key!r}: use letters, digits and '_'",
                file=path,
                line=yamlsrc.line_of(data, key) or line,
            )
    return {str(k): v for k, v in data.items()}


def parse_extra_vars(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``-e KEY=VALUE`` (VALUE read as YAML: numbers, booleans, lists) or ``-e @file.yaml``."""
    result: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            path = Path(item[1:])
            if not path.is_file():
                raise InputError(f"-e {item}: no such file")
            result.update(check_vars(yamlsrc.load(path), path, 1))
            continue
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(_NAME, key):
            raise InputError(f"-e {item!r}: expected KEY=VALUE or @FILE.yaml")
        try:
            result[key] = yamlsrc.load_plain(raw) if raw.strip() else ""
        except InputError:  # not YAML: the text as typed
            result[key] = raw
    return result
