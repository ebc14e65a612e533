"""Golden output of plan, run results and secrets status at 60 and 80 columns and piped.

Nothing a user must compare — host names, keys, fingerprints, verdicts — may
be cut or end in ``…``, whatever the width. The golden files are in
``tests/unit/golden/``; ``UPDATE_GOLDEN=1`` rewrites them (review the diff).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from helpers import ROOT
from rich.console import Console

from infratool.changes import Change, Plan
from infratool.cli import output as render
from infratool.runner import HostResult, RunResult
from infratool.secrets.secret import REDACTOR

GOLDEN = Path(__file__).parent / "golden"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

HOST = "nixtv-player-living-room"
EXPECTED = "SHA256:479z7Yw3Zpb+n+SgY1qK0e1Vq0u8yVJ3sZ4FJtq3c2A"
OFFERED = "SHA256:A3amy7gG9BjIyRPiWm9kB0yqVZ8lYxG3aLr3tq8XcLw"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq8gWk5Xk6f8Q0HqJ9l3d4Yw2nC0b7sZ1mR5tV6uP9x"
# Everything that must appear whole in every rendering.
MUST_KEEP = [HOST, EXPECTED, OFFERED, PUBKEY, "snix", "unreachable", "refused", "changed"]

WIDTHS = {"60": (60, True), "80": (80, True), "piped": (80, False)}


@pytest.fixture(autouse=True)
def _no_foreign_secrets():
    """The golden text is compared byte for byte: values other tests of this
    worker registered with the process-wide REDACTOR (a 6+ character word that
    also occurs in a plan) must not mask it. They are put back afterwards."""
    kept = sorted(REDACTOR._values)
    REDACTOR.clear()
    yield
    for value in kept:
        REDACTOR.register(value)


def _plan() -> Plan:
    return Plan(
        hosts=["snix", HOST, "brix"],
        changes=[
            Change(
                "snix",
                "remote_builders.setup",
                f"authorize client key {PUBKEY}",
                op="files.put",
                action="create",
            ),
            Change(
                "snix",
                "files.content",
                "update /etc/nix/machines",
                op="files.put",
                diff="--- /etc/nix/machines\n+++ /etc/nix/machines\n+ssh-ng://builder@snix x86_64-linux",
            ),
            Change(
                "snix",
                "remote_builders.check",
                "check: nix store ping and a --max-jobs 0 build on snix",
                op="command.run",
                action="check",
            ),
        ],
        failures={
            HOST: f"{HOST}: HOST KEY CHANGED — refusing to connect. Expected {EXPECTED}, offered {OFFERED}."
        },
        host_key_refused={HOST},
    )


def _result() -> RunResult:
    return RunResult(
        plan=_plan(),
        hosts={
            "snix": HostResult(
                "snix",
                "changed",
                applied=["authorize client key", "update /etc/nix/machines"],
                verified=["check: nix store ping and a --max-jobs 0 build on snix"],
            ),
            HOST: HostResult(
                HOST, "refused", error=f"HOST KEY CHANGED. Expected {EXPECTED}, offered {OFFERED}."
            ),
            "brix": HostResult("brix", "unreachable", error="connection refused (port 22)"),
        },
    )


def _console(width: int, terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=terminal, color_system=None, soft_wrap=True)
    return con, buf


def _check(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name}: output differs from {path}"


def _whole(text: str, must: list[str]) -> None:
    assert "…" not in text
    # A value may be wrapped only at the end of the terminal line by the terminal
    # itself (soft wrap), never broken by us: each must appear on one line.
    for value in must:
        assert value in text, (value, text)


@pytest.mark.parametrize("mode", WIDTHS)
def test_plan_golden(mode):
    con, buf = _console(*WIDTHS[mode])
    render.plan(con, _plan())
    text = buf.getvalue()
    _whole(text, [HOST, EXPECTED, OFFERED, PUBKEY, "snix"])
    # A check is counted apart, never as a change.
    assert "snix: 2 change(s), 1 check(s)" in text and "Plan: 2 change(s), 1 check(s)" in text
    _check(f"plan_{mode}", text)


@pytest.mark.parametrize("mode", WIDTHS)
def test_run_result_golden(mode):
    con, buf = _console(*WIDTHS[mode])
    render.results(con, _result())
    text = buf.getvalue()
    _whole(text, [HOST, EXPECTED, OFFERED, "snix", "refused", "unreachable", "changed"])
    assert "check: nix store ping" in text  # the verified column
    _check(f"result_{mode}", text)


@pytest.mark.parametrize("mode", WIDTHS)
def test_secrets_status_golden(cli, mode):
    width, terminal = WIDTHS[mode]
    env = {"COLUMNS": str(width)}
    if terminal:
        env["FORCE_COLOR"] = "1"  # rich: behave as on a terminal (NO_COLOR keeps it plain)
    proc = cli(
        "-i",
        ROOT / "hosts.yaml",
        "secrets",
        "status",
        "--policy",
        ROOT / "secrets" / "rotation.yaml",
        env=env,
    )
    assert proc.returncode == 2, proc.stderr  # both secrets never rotated: due
    text = ANSI.sub("", proc.stdout).replace(str(ROOT) + "/", "")
    _whole(text, ["postgres/app", "homeassistant/api-token", "DUE", "ok"])
    _check(f"secrets_status_{mode}", text)


def test_records_fall_back_rather_than_cut():
    """A keep column wider than the terminal: one record per line, the value whole."""
    con, buf = _console(60, True)
    render.records(
        con,
        None,
        [render.Column("host", keep=True), render.Column("key", keep=True), render.Column("note")],
        [[HOST, PUBKEY, "pinned in hosts.yaml"]],
    )
    text = buf.getvalue()
    assert text == f'{HOST}  key="{PUBKEY}"  note="pinned in hosts.yaml"\n'
    wide, wide_buf = _console(200, True)
    render.records(
        wide, None, [render.Column("host", keep=True), render.Column("key", keep=True)], [[HOST, PUBKEY]]
    )
    assert "┃" in wide_buf.getvalue() and PUBKEY in wide_buf.getvalue()
