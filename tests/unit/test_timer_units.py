"""The timer units: nothing the operator types can inject a directive (issue 22.3),
and ``timer install`` never replaces an edited unit silently (issue 22.6).

These run the real ``infratool`` command and the real ``systemd-analyze``; the
units running under a real systemd are in tests/e2e/test_timer_systemd.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import systemd_verify

from infratool.errors import InputError
from infratool.rotation.timer import TimerOptions, check_timespan, default_executable, render_units

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)
INJECTED = "ExecStartPre=+/bin/sh -c 'touch /tmp/pwned'"


def infratool(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real command line."""
    return subprocess.run(
        [sys.executable, "-m", "infratool", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def inventory(tmp_path: Path, flake: str) -> Path:
    """A one-host inventory whose defaults.flake is ``flake`` (written as a YAML double-quoted string)."""
    escaped = flake.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    path = tmp_path / "hosts.yaml"
    path.write_text(f'defaults:\n  flake: "{escaped}"\nhosts:\n  snix:\n    address: 127.0.0.1\n')
    return path


def render(tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    fleet = tmp_path / "fleet"
    fleet.mkdir(exist_ok=True)
    return infratool(
        "-i",
        inventory(tmp_path, str(fleet)),
        "timer",
        "render",
        "--age-key-file",
        tmp_path / "k",
        *args,
        cwd=tmp_path,
    )


# --- 22.3: directive injection ---------------------------------------------------------


def test_a_newline_in_the_inventory_flake_is_refused_with_file_and_line(tmp_path):
    inv = inventory(tmp_path, f"/x\n{INJECTED}")
    r = infratool("-i", inv, "timer", "render", "--age-key-file", tmp_path / "k", cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"{inv}:2:" in r.stderr and "flake" in r.stderr and "control character" in r.stderr
    assert "ExecStartPre" not in r.stdout and r.stdout == ""


@pytest.mark.parametrize(
    "option",
    ["--randomized-delay", "--on-calendar", "--age-key-file", "--flake"],
)
def test_a_newline_in_any_option_is_refused(tmp_path, option):
    value = f"/tmp/x\n{INJECTED}" if option in ("--age-key-file", "--flake") else f"1h\n{INJECTED}"
    r = render(tmp_path, option, value)
    assert r.returncode == 3, r.stdout + r.stderr
    assert option in r.stderr and "control character" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("value", ["1h\\", "/x\\"])
def test_a_trailing_backslash_cannot_swallow_the_next_line(tmp_path, value):
    option = "--randomized-delay" if value == "1h\\" else "--age-key-file"
    r = render(tmp_path, option, value)
    assert r.returncode == 3 and "backslash" in r.stderr, r.stdout + r.stderr


@needs_analyze
@pytest.mark.parametrize(
    "span",
    ["15min", "2h 30min", "1.5h", "90", "1h30m", "infinity", "0", "3 weeks", "soon", "1hx", "-1h", " "],
)
def test_randomized_delay_is_a_systemd_time_span_exactly_when_systemd_says_so(span):
    systemd_ok = subprocess.run(["systemd-analyze", "timespan", span], capture_output=True).returncode == 0
    try:
        check_timespan("--randomized-delay", span)
        ours = True
    except InputError:
        ours = False
    assert ours == systemd_ok


def test_a_bad_randomized_delay_exits_3(tmp_path):
    r = render(tmp_path, "--randomized-delay", "soon")
    assert r.returncode == 3 and "time span" in r.stderr, r.stderr


@needs_analyze
def test_odd_characters_in_paths_are_escaped_and_the_units_verify(tmp_path):
    """Blanks, quotes, % and $ in a path reach systemd as written, not as specifiers or variables."""
    flake = tmp_path / "fleet 100% $HOME 'q'"
    flake.mkdir()
    key = tmp_path / "age%i.key"
    units = render_units(
        TimerOptions(
            flake=flake,
            inventory=flake / "hosts.yaml",
            age_key_file=key,
            executable=default_executable(),
        )
    )
    service = units["infratool-rotate.service"]
    assert f"WorkingDirectory={str(flake).replace('%', '%%')}\n" in service
    assert f'ReadWritePaths="{str(flake).replace("%", "%%")}"\n' in service
    assert f"LoadCredential=sops-age-key:{str(key).replace('%', '%%')}\n" in service
    assert f'-i "{str(flake).replace("%", "%%").replace("$", "$$")}/hosts.yaml" secrets' in service
    verify = systemd_verify(units, tmp_path / "units")
    assert verify.returncode == 0, verify.stderr


def test_relative_paths_become_absolute(tmp_path):
    r = render(tmp_path, "--age-key-file", "rel/age.key")
    assert r.returncode == 0, r.stderr
    assert f"LoadCredential=sops-age-key:{tmp_path}/rel/age.key\n" in r.stdout


# --- 22.6: install over an edited unit ----------------------------------------------------


def install(tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    fleet = tmp_path / "fleet"
    fleet.mkdir(exist_ok=True)
    return infratool(
        "-i",
        inventory(tmp_path, str(fleet)),
        "timer",
        "install",
        "--dir",
        tmp_path / "units",
        "--age-key-file",
        tmp_path / "k",
        *args,
        cwd=tmp_path,
    )


def test_install_refuses_to_replace_an_edited_unit_and_shows_the_diff(tmp_path):
    assert install(tmp_path).returncode == 0
    service = tmp_path / "units" / "infratool-rotate.service"
    timer = tmp_path / "units" / "infratool-rotate.timer"
    assert stat.S_IMODE(service.stat().st_mode) == 0o644
    edited = service.read_text().replace("TimeoutStartSec=30min", "TimeoutStartSec=2h")
    service.write_text(edited)
    service.chmod(0o600)
    timer_before = timer.read_text()

    r = install(tmp_path, "--on-calendar", "Sun 03:00")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "-TimeoutStartSec=2h" in r.stdout and "+TimeoutStartSec=30min" in r.stdout
    assert "-OnCalendar=daily" in r.stdout and "+OnCalendar=Sun 03:00" in r.stdout
    assert "--force" in r.stderr
    # Nothing was written: not the edited service, not the timer either.
    assert service.read_text() == edited and timer.read_text() == timer_before
    assert stat.S_IMODE(service.stat().st_mode) == 0o600

    forced = install(tmp_path, "--on-calendar", "Sun 03:00", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "TimeoutStartSec=30min" in service.read_text() and "OnCalendar=Sun 03:00" in timer.read_text()
    assert stat.S_IMODE(service.stat().st_mode) == 0o600  # the local mode stays
    assert stat.S_IMODE(timer.stat().st_mode) == 0o644

    again = install(tmp_path, "--on-calendar", "Sun 03:00")
    assert again.returncode == 0 and again.stdout.count("unchanged") == 2, again.stdout


def test_install_replaces_a_symlinked_unit_only_with_force_and_says_so(tmp_path):
    (tmp_path / "units").mkdir()
    elsewhere = tmp_path / "vendor.service"
    elsewhere.write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "units" / "infratool-rotate.service").symlink_to(elsewhere)
    r = install(tmp_path)
    assert r.returncode == 1 and "symlink" in r.stderr, r.stderr
    r = install(tmp_path, "--force")
    assert r.returncode == 0, r.stderr
    assert elsewhere.read_text() == "[Service]\nExecStart=/bin/true\n"  # the link's target is untouched
    assert not (tmp_path / "units" / "infratool-rotate.service").is_symlink()
