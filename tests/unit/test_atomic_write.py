"""The one atomic-write helper (infratool.safeopen.atomic_write) that every local writer uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infratool import context, safeopen
from infratool.secrets import store


def test_one_helper_under_every_old_name() -> None:
    assert store.atomic_write is safeopen.atomic_write
    assert context.write_atomic is safeopen.atomic_write


def test_new_file_mode_kept_mode_explicit_mode_and_no_temp_left(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.yaml"
    safeopen.atomic_write(path, b"one")  # parents made; a new file is 0644
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    safeopen.atomic_write(path, b"two")  # no mode: the existing file's is kept
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o600
    safeopen.atomic_write(path, b"three", 0o640)  # an explicit mode applies
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(path.parent) == ["f.yaml"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    safeopen.atomic_write(path, b"old")

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        safeopen.atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]
