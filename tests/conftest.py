"""Fixtures for the whole suite: a real lab fleet per test, and a private audit log.

The lab fixtures start real sshd hosts (see ``infratool_lab``); they skip, with
the reason, on a machine that cannot run them (not root, no sshd) — except in
CI (``CI=true``), where every skip is turned into a failure: a green CI run
must mean the real parts ran. The session ends with the number of skipped
tests (printed just before pytest's own summary line, which stays last). Every lab
gets its own loopback subnet so tests can run in parallel under pytest-xdist:
``127.<10 + worker>.<n>``, where ``n`` starts at a random point per process so
two pytest sessions on one machine rarely meet, and a collision that does
happen (AddressInUseError) just moves on to the next subnet.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Cli
from infratool_lab import AddressInUseError, Lab, LabUnavailable

LAB_FIXTURES = frozenset({"lab", "lab_factory"})
CI_TRUE = ("1", "true", "yes")
_SUBNET_ATTEMPTS = 32

_third_octet = itertools.count(random.SystemRandom().randrange(256))


def _worker_number() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return int(worker) if worker.isdigit() else 0


def next_subnet() -> str:
    """A loopback subnet this process has not handed out recently (unique per xdist worker)."""
    return f"127.{10 + _worker_number() % 240}.{next(_third_octet) % 256}"


def in_ci() -> bool:
    """True when the suite runs in CI (``CI=true``), where nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """In CI, a skipped test is a failed one: its reason becomes the failure message.

    Skips happen when a real part is missing (no lab, no sbsign, no nix); on the
    CI machine ``scripts/setup.sh`` installs all of them, so a skip there means
    the suite silently stopped testing something. ``-m``/``-k`` deselection is
    not a skip and is unaffected.
    """
    report: pytest.TestReport = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {reason}"
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """Say how many tests were skipped, also when none were (pytest omits a zero count).

    The outermost wrapper, so the line comes after pytest's short summary; a
    plain line, not a ``===`` separator, so pytest's own result line stays the
    last line of the output (the CI runner judges that one).
    """
    yield
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped tests: {skipped}" + (" (CI=true: skips fail)" if in_ci() else ""))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a lab with ``lab``, so ``-m 'not lab'`` skips them all."""
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _private_audit_log(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Send the audit log (and any XDG state) of every test to a temp dir, never ~/.local/state.

    A directory of its own, not ``tmp_path``: tests that assert nothing was
    left in their temp dir must not trip over the audit log.
    """
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("INFRATOOL_AUDIT_LOG", str(state / "audit.jsonl"))
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state / "audit.jsonl"


@pytest.fixture
def lab_subnet() -> str:
    """A fresh loopback subnet for a test that builds its own :class:`Lab`."""
    return next_subnet()


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[[int], Lab]]:
    """``make(count, nixos=None) -> Lab``: a running lab of ``count`` hosts in ``tmp_path``; all torn down after.

    ``nixos`` (True, or host names) makes those hosts NixOS-shaped (``lab up --nixos``).
    """
    labs: list[Lab] = []

    def make(count: int = 4, nixos: bool | list[str] | None = None) -> Lab:
        root = tmp_path / f"lab{len(labs)}"
        try:
            Lab(root).preflight()
        except LabUnavailable as exc:
            if in_ci():
                pytest.fail(f"no lab on this CI machine (CI=true, so this fails): {exc}")
            pytest.skip(f"no lab on this machine: {exc}")
        for _ in range(_SUBNET_ATTEMPTS):
            lab = Lab(root, subnet=next_subnet())
            labs.append(lab)
            try:
                lab.up(count, nixos=nixos)
            except AddressInUseError:
                continue  # another lab (another pytest session?) holds it
            return lab
        raise RuntimeError(f"no free loopback subnet after {_SUBNET_ATTEMPTS} tries")

    yield make
    for lab in labs:
        lab.down()


@pytest.fixture
def lab(lab_factory: Callable[[int], Lab]) -> Lab:
    """A fresh, running four-host lab (snix, slax, brix, nixtv-player), torn down after the test."""
    return lab_factory(4)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``cli(*args, input=None, env=None)``: run ``python -m infratool`` and capture its output.

    ``cli.start(*args, env=None)`` starts it in the background (a Popen). Its
    TMPDIR is ``tmp_path/"controller-tmp"``, so tests can check that nothing
    secret was left in the controller's temp dir.
    """
    return Cli(tmp_path)


@pytest.fixture
def fleet(lab, monkeypatch):
    """The four-host lab plus its flake repo's secrets: ``secrets/.sops.yaml`` and an operator key.

    ``SOPS_AGE_KEY_FILE`` is set for the test (and every ``cli`` call) to the
    lab's operator key, as `infratool lab up` tells an operator to do.
    """
    from infratool.onboard.scaffold import ensure_operator_repo

    key = lab.root / "age.key"
    ensure_operator_repo(lab.flake_dir, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    return lab
