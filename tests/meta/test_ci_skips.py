"""The suite's own rules about skips: in CI (``CI=true``) a skip fails the run, and
every session reports how many tests were skipped (0 on a machine set up by
``scripts/setup.sh``).

Each test runs a small pytest session in a subprocess with the suite's
``tests/conftest.py`` loaded as a plugin, on a test file that skips in the
two ways the suite does: an explicit ``pytest.skip`` and a lab that is not
available (``Lab.preflight`` raising :class:`LabUnavailable`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

SKIPPING = """
import pytest
from infratool_lab import Lab, LabUnavailable


@pytest.fixture(autouse=True)
def no_lab(monkeypatch):
    def refuse(self):
        raise LabUnavailable("sshd not found (made up by the test)")

    monkeypatch.setattr(Lab, "preflight", refuse)


def test_passes():
    pass


def test_skips_itself():
    pytest.skip("no frobnicator on this machine")


def test_needs_the_lab(lab):
    pass
"""


def run_session(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """Run the skipping file under the suite's conftest; ``ci`` is $CI (None: unset)."""
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT / "tests")
    # Its own --basetemp: without one, the inner pytest makes a numbered
    # /tmp/pytest-of-<user>/pytest-N and, at exit, deletes all but the newest
    # three of them -- the trees earlier CI runs left there (whole labs and Nix
    # stores). That rm took over 120 s on a loaded CI machine and failed the run.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-c", os.devnull, "--rootdir", str(tmp_path),
         "--basetemp", str(tmp_path / "inner"),
         "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning", "-q", str(tmp_path / "test_skipping.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip


def test_outside_ci_skips_are_skips_and_counted(tmp_path: Path) -> None:
    r = run_session(tmp_path, ci=None)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped tests: 2" in lines[-2], lines[-3:]
    # pytest's own summary stays the last line (the CI runner judges it).
    assert "1 passed, 2 skipped" in lines[-1], lines[-1]


def test_in_ci_a_skip_and_a_missing_lab_fail(tmp_path: Path) -> None:
    r = run_session(tmp_path, ci="true")
    out = r.stdout
    lines = out.strip().splitlines()
    assert r.returncode == 1, out + r.stderr
    assert "skipped in CI (CI=true), which counts as a failure: no frobnicator on this machine" in out
    assert "no lab on this CI machine" in out and "sshd not found (made up by the test)" in out
    assert "skipped tests: 0 (CI=true: skips fail)" in lines[-2], lines[-3:]
    assert "1 failed, 1 passed, 1 error" in lines[-1], lines[-1]


def test_ci_run_sets_ci_and_runs_the_readme_command() -> None:
    """``.ci/run`` is CI by definition: it sets CI=true even if the runner does not."""
    text = (ROOT / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in text and "scripts/test.sh" in text
