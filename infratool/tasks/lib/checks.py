"""Parameter checks shared by task families (each returns a problem, or None)."""

from __future__ import annotations

from pathlib import Path


def check_abs_path(value: str) -> str | None:
    """Param check: an absolute path without '..' or control characters."""
    if not value.startswith("/"):
        return "must be an absolute path"
    if ".." in Path(value).parts:
        return "must not contain '..'"
    if any(ord(ch) < 32 for ch in value):
        return "must not contain control characters"
    return None


def check_mode(value: str) -> str | None:
    """Param check: an octal mode string like "0644"."""
    try:
        mode = int(str(value), 8)
    except ValueError:
        return f"must be an octal mode like '0644', got {value!r}"
    return None if 0 <= mode <= 0o7777 else "must be between 0000 and 7777"


def check_name(value: str) -> str | None:
    """Param check: a user or group name."""
    ok = value and all(ch.isalnum() or ch in "_-." for ch in value) and not value.startswith("-")
    return None if ok else f"invalid user/group name {value!r}"
