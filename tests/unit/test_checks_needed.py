"""Which checks a plan keeps (infratool.plandeps.needed_checks): no lab, a real state file."""

from __future__ import annotations

from infratool.changes import CHECK, Change
from infratool.checkstate import CheckState, check_digest
from infratool.plandeps import needed_checks, stale_message


def _check(host: str, requires: tuple[str, ...] = ()) -> Change:
    return Change(
        host,
        "remote_builders.check",
        f"check: build on snix from {host}",
        op="command.run",
        args={"cmd": "true"},
        action=CHECK,
        check="build",
        requires=requires,
        facts="sha256:f",
    )


def _change(host: str) -> Change:
    return Change(host, "files.content", "update /etc/x", op="files.remove", args={"path": "/etc/x"})


def _passed(state: CheckState, *hosts: str) -> None:
    state.record({(h, "build"): check_digest("sha256:f", {"cmd": "true"}) for h in hosts})


def test_a_check_that_passed_on_these_inputs_is_not_planned_again(tmp_path):
    state = CheckState(tmp_path / "hosts.yaml", tmp_path / "checks.json")
    assert needed_checks([_check("slax")], state) != []  # never passed: planned
    _passed(state, "slax")
    assert needed_checks([_check("slax")], state) == []  # converged: 0 checks
    other = CheckState(tmp_path / "other.yaml", tmp_path / "checks.json")
    assert needed_checks([_check("slax")], other) != []  # another inventory's record does not count


def test_a_change_on_its_host_or_a_required_host_brings_the_check_back(tmp_path):
    state = CheckState(tmp_path / "hosts.yaml", tmp_path / "checks.json")
    _passed(state, "slax", "brix")
    plan = [_change("slax"), _check("slax"), _check("brix")]
    assert [c.host for c in needed_checks(plan, state) if c.is_check] == ["slax"]
    plan = [_change("snix"), _check("slax", requires=("snix",)), _check("brix")]
    assert [c.host for c in needed_checks(plan, state) if c.is_check] == ["slax"]


def test_other_inputs_bring_the_check_back(tmp_path):
    state = CheckState(tmp_path / "hosts.yaml", tmp_path / "checks.json")
    _passed(state, "slax")
    moved = _check("slax")
    moved.facts = "sha256:other"
    assert needed_checks([moved], state) == [moved]


def test_stale_message_names_files_by_path():
    assert stale_message(["file /etc/x", "file_meta /etc/y", "users"]) == (
        "facts changed since the plan: /etc/x, /etc/y, users"
    )
