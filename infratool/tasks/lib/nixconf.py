"""``key = value`` lines of nix.conf, and their NixOS ``nix.settings`` form."""

from __future__ import annotations

import re
from typing import Any

NIX_CONF = "/etc/nix/nix.conf"


def conf_value(value: Any) -> str:
    """A nix.conf value: lists space-separated, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(conf_value(v) for v in value)
    return str(value)


def edit_conf(text: str, settings: dict[str, Any]) -> str:
    """``text`` with each setting's line replaced (first occurrence) or appended."""
    lines = text.splitlines()
    for key, value in settings.items():
        line = f"{key} = {conf_value(value)}"
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        hits = [i for i, existing in enumerate(lines) if pattern.match(existing)]
        if hits:
            lines[hits[0]] = line
            for i in reversed(hits[1:]):
                del lines[i]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def nix_setting_value(value: Any) -> Any:
    """The NixOS ``nix.settings`` form: space-separated strings become lists."""
    if isinstance(value, str) and " " in value.strip():
        return value.split()
    return value
