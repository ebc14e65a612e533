"""docs/secure-boot.md, executed the way a reader would: every ``$ infratool`` line, in order, on a lab.

The lab is the one the doc's examples come from: snix, slax and brix run the
sbctl emulator on fresh firmware in Setup Mode; nixtv-player has no sbctl.
Each ``$ infratool ...`` line of a ``console`` block runs as written (the
inventory comes from ``INFRATOOL_INVENTORY``, the playbooks are the shipped
ones, under ``playbooks/`` in the working directory) and must exit 0: the
runbook's steps must work in order for every host, nixtv-player included.

What a reader does that the doc cannot type:

* answers "y" at a confirmation prompt: here ``--yes`` (stdin is not a terminal);
* sets the firmware (step 5, Setup Mode: the lab's firmware is fresh, already
  in it), reboots with Secure Boot on (step 7), loses the disk (recovery):
  the :data:`HIDDEN` steps, done to the lab between the doc's lines;
* exports their own ``SOPS_AGE_KEY_FILE``: the lab's operator key is exported already.

A ``# verdict: X`` comment on a status line must be the host's verdict then.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import ok
from infratool_lab.sbctl import provision_lab, set_lab_firmware

DOC = ROOT / "docs" / "secure-boot.md"
EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
CONFIRMED = ("run", "restore", "enroll")
"""Commands that ask before applying (the reader types "y"; the test passes --yes)."""

pytestmark = pytest.mark.skipif(
    not (shutil.which("sbsign") and EFI.exists() and Path("/usr/bin/python3").exists()),
    reason="needs sbsigntool, systemd-boot-efi and /usr/bin/python3",
)


def runbook(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, command, verdict comment)`` of every ``$ infratool`` line of the doc's console blocks."""
    steps = []
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence == "console" and line.startswith("$ infratool "):
            command, _, comment = line[2:].partition("#")
            verdict = re.search(r"verdict: ([a-z-]+)", comment)
            steps.append((n, command.strip(), verdict.group(1) if verdict else None))
    return steps


def test_the_runbook_parses_into_the_journey():
    commands = [c for _, c, _ in runbook(DOC.read_text())]
    assert commands[0] == "infratool secureboot status"
    assert any(c.startswith("infratool run playbooks/secureboot.yaml") for c in commands)
    assert any(c.startswith("infratool secureboot enroll") for c in commands)
    assert any(c.startswith("infratool secureboot restore") for c in commands)


def _reboot_with_secure_boot_on(lab) -> None:
    """Step 7: reboot; Secure Boot switched on in the firmware setup."""
    set_lab_firmware(lab, "snix", secure_boot_enabled=True, secure_boot=True)


def _lose_the_disk(lab) -> None:
    """Recovery: snix's disk was lost and the host reinstalled (no keys; lanzaboote not yet deployed)."""
    shutil.rmtree(lab.host("snix").path("/var/lib/sbctl"))
    set_lab_firmware(lab, "snix", secure_boot=False)


HIDDEN = {"enabled": _reboot_with_secure_boot_on, "needs-restore": _lose_the_disk}
"""What the reader does before a status line that expects this verdict."""


def test_every_command_of_the_secure_boot_runbook_works_in_order(fleet, cli, tmp_path):
    provision_lab(fleet)
    (tmp_path / "playbooks").symlink_to(ROOT / "playbooks")
    text = DOC.read_text()
    env = {"INFRATOOL_INVENTORY": str(fleet.inventory_path)}
    ran = []
    for line, command, verdict in runbook(text):
        if verdict in HIDDEN:
            HIDDEN[verdict](fleet)
        argv = shlex.split(command)[1:]
        if any(word in argv[:2] for word in CONFIRMED):
            argv.append("--yes")
        result = cli(*argv, env=env)
        out = result.stdout + result.stderr
        assert result.returncode == 0, (
            f"docs/secure-boot.md:{line}: `{command}` exited {result.returncode}\n{out}"
        )
        if verdict is not None:
            rows = json.loads(ok(cli("--json", *argv, env=env)).stdout)["hosts"]
            assert [r["verdict"] for r in rows] == [verdict], f"docs/secure-boot.md:{line}: {rows}"
        ran.append(command)
    # The whole journey ran: readiness, keys and backup, enrollment, verification, recovery.
    assert len(ran) >= 7, ran
    restored = json.loads(ok(cli("--json", "secureboot", "status", "--limit", "snix", env=env)).stdout)
    assert restored["hosts"][0]["backup"]["state"] == "verified"
