"""Secure Boot rules that need no host: which directory sbctl uses, what enrollment drops, sbctl's error line.

The facts are built the way the fact parsers build them from real sbctl
output (``sbctl status --json``, ``sbctl version``, the legacy-layout notice,
``sbctl list-enrolled-keys --json``); the host-side behaviour itself is
tested on the lab in tests/e2e/test_secureboot.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from infratool.tasks.secureboot.enroll import enroll_command, error_line
from infratool.tasks.secureboot.hostinfo import (
    LEGACY_DIR,
    SBCTL_DIR,
    Bundle,
    CertInfo,
    HostView,
    KeyFile,
)
from infratool.tasks.secureboot.sbctlstate import SbctlState, _parse_state, parse_enrolled, parse_version
from infratool.tasks.secureboot.statement import dropped, firmware_statement
from infratool.tasks.secureboot.vendorcerts import MICROSOFT, microsoft_certs

DATA = Path(__file__).resolve().parents[2] / "lab/infratool_lab/sbctl/sbctl_data"
NOTICE = "old configuration detected. Please use `sbctl setup --migrate`"


def _bundle(directory: str, seed: str = "a") -> Bundle:
    paths = ("GUID", *(f"keys/{v}/{v}.{e}" for v in ("PK", "KEK", "db") for e in ("key", "pem")))
    files = {
        p: KeyFile(p, 0o400, "root", "root", hashlib.sha256(f"{seed}{p}".encode()).hexdigest()) for p in paths
    }
    certs = {
        v: CertInfo(f"CN={v}", hashlib.sha256(f"{seed}{v}".encode()).hexdigest(), "2031-01-01")
        for v in ("PK", "KEK", "db")
    }
    return Bundle(directory, True, files, certs)


def _enrolled_hex(**by_var: list[bytes]) -> str:
    doc = {
        key: [{"Raw": base64.b64encode(d).decode()} for d in by_var.get(var, [])] or None
        for var, key in (("PK", "PK"), ("KEK", "KEK"), ("db", "DB"))
    }
    return json.dumps(doc).encode().hex()


def _view(state: SbctlState, **bundles: Bundle) -> HostView:
    found = {SBCTL_DIR: Bundle(SBCTL_DIR), LEGACY_DIR: Bundle(LEGACY_DIR)}
    found.update({b.directory: b for b in bundles.values()})
    return HostView("h", state, found)


def test_the_legacy_notice_decides_the_directory_sbctl_uses():
    status = json.dumps({"installed": True, "setup_mode": True})
    nixpkgs = _parse_state(
        f"sbctl\t/run/current-system/sw/bin/sbctl\nversion\t0.18\nlegacy\t1\nstatus\t{status}\n", 0
    )
    assert nixpkgs.legacy and nixpkgs.version_tuple == (0, 18)
    legacy_dir = Bundle(LEGACY_DIR, exists=True)
    view = _view(nixpkgs, a=_bundle(SBCTL_DIR), b=legacy_dir)
    assert view.sbctl_dir == LEGACY_DIR and view.build == "nixpkgs"
    # Keys only in /var/lib/sbctl, but sbctl looks in the empty /etc/secureboot: say so.
    assert view.keys().directory == SBCTL_DIR
    assert "move /etc/secureboot aside" in view.unseen_keys(view.keys())
    upstream = _parse_state(f"sbctl\t/usr/bin/sbctl\nversion\t0.18\nstatus\t{status}\n", 0)
    view = _view(upstream, b=_bundle(LEGACY_DIR))
    assert view.sbctl_dir == SBCTL_DIR and view.build == "upstream"
    assert "--pki-bundle /var/lib/sbctl" in view.unseen_keys(view.keys())
    # Identical keys in both: the one sbctl uses wins.
    both = _view(nixpkgs, a=_bundle(SBCTL_DIR), b=_bundle(LEGACY_DIR))
    assert both.keys().directory == LEGACY_DIR and both.unseen_keys(both.keys()) is None
    old = _parse_state(f"sbctl\t/usr/bin/sbctl\nstatus\t{status}\n", 0)
    assert old.version is None and old.version_tuple is None


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("0.18", (0, 18)), ("0.15.4", (0, 15)), ("v0.17", (0, 17)), ("unknown", None), ("", None)],
)
def test_version_parsing(text, parsed):
    assert parse_version(text) == parsed


def test_microsoft_set_by_version():
    assert [c.name for c in microsoft_certs((0, 16))] == [c.name for c in MICROSOFT if "2011" in c.name]
    assert len(microsoft_certs((0, 17))) == 7 and len(microsoft_certs(None)) == 7
    # The table's digests are those of the certificates sbctl embeds.
    for cert in MICROSOFT:
        files = [
            p
            for p in (DATA / "microsoft" / cert.var).iterdir()
            if hashlib.sha256(p.read_bytes()).hexdigest() == cert.sha256
        ]
        assert files, cert.name


def test_error_line_skips_the_notice():
    stderr = (
        f"{NOTICE}\nCould not find any TPM Eventlog in the system. This means ...\n\nThere are three flags"
    )
    assert error_line("", stderr).startswith("Could not find any TPM Eventlog")
    assert (
        error_line("You need to chattr -i files in efivarfs\n", f"{NOTICE}\n")
        == "You need to chattr -i files in efivarfs"
    )
    assert error_line("", "") == "no output"


def test_plan_lists_what_enrollment_drops_and_the_command():
    oem_kek = next((DATA / "oem/KEK").iterdir()).read_bytes()
    oem_db = next((DATA / "oem/db").iterdir()).read_bytes()
    ms_kek = (DATA / "microsoft/KEK/MicCorKEKCA2011_2011-06-24.der").read_bytes()
    state = SbctlState(
        path="/usr/bin/sbctl",
        status={"installed": True, "setup_mode": True},
        version="0.16",
        enrolled=parse_enrolled(_enrolled_hex(KEK=[ms_kek, oem_kek], db=[oem_db])),
    )
    view = _view(state, a=_bundle(SBCTL_DIR))
    gone = dropped(view, view.keys(), microsoft=True, builtin=["db"])
    assert gone["KEK"] == [f"Lab OEM KEK CA 2020 (sha256:{hashlib.sha256(oem_kek).hexdigest()[:12]})"]
    assert "kept if it is one of the firmware's built-in defaults" in gone["db"][0]
    assert dropped(view, view.keys(), microsoft=False, builtin=[])["KEK"][0].startswith(
        "Microsoft Corporation KEK CA 2011"
    )
    text = firmware_statement(view, view.keys(), True, False, ["db"])
    assert "(2 certificates)" in text and "sbctl 0.16 enrolls only Microsoft's 2011 certificates" in text
    assert "KEK-8be4df61-93ca-11d2-aa0d-00e098032b8c" in text and "/PK-" not in text
    assert (
        enroll_command(True, True, ["KEK", "db"])
        == "sbctl enroll-keys --ignore-immutable --microsoft --tpm-eventlog --firmware-builtin=db,KEK"
    )
