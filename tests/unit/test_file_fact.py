"""The ``file`` fact run by real shells: it reads no file but the one at the path asked for.

The fact opens the file once (fd 3) and, before reading it, checks with
builtins that the descriptor is the file now at that path in the physical
parent directory. These tests run the exact script a host gets under every
POSIX shell found here (dash is Debian's /bin/sh, bash NixOS's login shell)
and make the swaps deterministic: a ``cd`` shell function (found before the
builtin) swaps the file in the window between the open and the check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from infratool.facts import FactRequest, FileState, build_script, parse_output

SHELLS = [sh for sh in ("dash", "bash", "busybox") if shutil.which(sh)]


@pytest.fixture(params=SHELLS)
def shell(request) -> list[str]:
    """argv prefix of one real shell (busybox runs its ``sh``)."""
    return [request.param, "sh", "-c"] if request.param == "busybox" else [request.param, "-c"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A physical directory (no symlink on its way) holding ``conf`` and a 0600 ``secret``."""
    root = Path(os.path.realpath(tmp_path))
    (root / "conf").write_text("public=1\n")
    (root / "secret").write_text("canary-file-fact-3d1e\n")
    (root / "secret").chmod(0o600)
    return root


def fact(shell: list[str], path: Path | str, prelude: str = "") -> FileState:
    """The ``file`` fact of ``path``, gathered by ``shell`` running the host script (after ``prelude``)."""
    script, marker, ordered = build_script([FactRequest("file", str(path))])
    out = subprocess.run([*shell, prelude + script], capture_output=True, text=True, check=True).stdout
    return parse_output(out, marker, ordered)[ordered[0]]


def test_a_regular_file_is_read_with_its_mode(shell, root):
    state = fact(shell, root / "conf")
    assert state.exists and state.is_file and not state.via_symlink
    assert state.content == b"public=1\n" and state.size == 9
    assert state.mode == (root / "conf").stat().st_mode & 0o7777


def test_a_symlink_is_reported_never_followed(shell, root):
    (root / "link").symlink_to(root / "secret")
    state = fact(shell, root / "link")
    assert state.is_symlink and state.content is None and state.sha256 is None


def test_a_path_through_a_symlinked_parent_resolves_elsewhere(shell, root):
    (root / "real").mkdir()
    (root / "real" / "conf").write_text("elsewhere\n")
    (root / "plink").symlink_to(root / "real")
    state = fact(shell, root / "plink" / "conf")
    assert state.via_symlink and state.content is None and state.sha256 is None


def test_a_file_swapped_after_the_open_is_not_read(shell, root):
    """The descriptor holds the secret; by the check, a harmless file is at the path.

    Deterministic stand-in for the race a directory owner can run (a symlink
    to a root file at the open, a regular file again by the check): ``cd``
    is where the fact's check begins, so the function swaps the name there.
    """
    (root / "harmless").write_text("public=1\n")
    swap = f"cd() {{ mv -f -- '{root}/harmless' '{root}/secret'; command cd \"$@\"; }}\n"
    state = fact(shell, root / "secret", prelude=swap)
    assert state.via_symlink and state.content is None and state.sha256 is None
    assert (root / "secret").read_text() == "public=1\n"  # the swap did happen


def test_missing_and_non_file_paths(shell, root):
    assert fact(shell, root / "nope") == FileState(exists=False)
    state = fact(shell, root)
    assert state.exists and not state.is_file and not state.is_symlink
