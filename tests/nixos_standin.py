"""A minimal NixOS-shaped flake for deploy tests: a real toplevel built by real Nix, nothing else.

Until the nixlab lab (``lab up --nixos``) runs everywhere, the deploy tests use
this stand-in: ``nixosConfigurations.<host>.config.system.build.toplevel``
is a ``builtins.derivation`` (``/bin/sh`` builder) whose output holds the
host's generated files and a ``bin/switch-to-configuration`` that does what
NixOS's does to the parts the engine watches: ``test``/``switch`` point
``/run/current-system`` at the toplevel (and start sshd if it is down),
``boot`` records the boot default. It is a **stand-in for the NixOS module
system and activation**, named as such; the profile, generations, store
paths, ``nix build``/``nix copy``/``nix-env`` are the real ones.

Knobs (``hosts/<host>/knobs``, one word a line) make a generation misbehave:
``break-sshd`` (its activation stops sshd), ``fail-activation`` (exits 1),
``drop-config`` (the generation lacks the generated files: a verify fails).
"""

from __future__ import annotations

from pathlib import Path

FLAKE = r"""{
  description = "infratool deploy stand-in fleet";
  outputs = { self }:
    let
      fleet = builtins.fromJSON (builtins.readFile ./hosts.json);
      names = fleet.hosts;
      read = p: if builtins.pathExists p then builtins.readFile p else "";
      mk = name:
        let
          dir = ./hosts + "/${name}/generated";
          files = if builtins.pathExists dir then builtins.attrNames (builtins.readDir dir) else [ ];
          config = builtins.concatStringsSep "\n" (map (f: "# ${f}\n" + builtins.readFile (dir + "/${f}")) files);
        in {
          config.system.build.toplevel = derivation {
            name = "nixos-system-${name}";
            system = fleet.system;
            builder = "/bin/sh";
            PATH = "/usr/bin:/bin";
            inherit config;
            knobs = read (./hosts + "/${name}/knobs");
            activate = builtins.readFile ./switch-to-configuration;
            args = [ "-c" ''
              mkdir -p $out/bin
              printf '%s' "$config" > $out/configuration
              printf '%s' "$knobs" > $out/knobs
              case "$knobs" in *drop-config*) : > $out/configuration ;; esac
              printf '%s' "$activate" > $out/bin/switch-to-configuration
              chmod +x $out/bin/switch-to-configuration
            '' ];
          };
        };
    in { nixosConfigurations = builtins.listToAttrs (map (n: { name = n; value = mk n; }) names); };
}
"""

SWITCH = r"""#!/bin/sh
# Stand-in for NixOS's switch-to-configuration (see tests/nixos_standin.py).
set -e
self=$(dirname "$(dirname "$(readlink -f "$0")")")
case "$1" in
  test|switch)
    ln -sfn "$self" /run/.current-system.new && mv -T /run/.current-system.new /run/current-system
    if grep -qx fail-activation "$self/knobs"; then echo "activation failed (knob)" >&2; exit 1; fi
    pid=$(cat /run/sshd.pid 2>/dev/null || true)
    if grep -qx break-sshd "$self/knobs"; then
      [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    elif [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      /usr/sbin/sshd -f /etc/ssh/sshd_config -E /var/log/sshd.log
    fi
    ;;
esac
case "$1" in
  boot|switch)
    mkdir -p /var/lib/standin-boot
    ln -sfn "$self" /var/lib/standin-boot/.default.new && mv -T /var/lib/standin-boot/.default.new /var/lib/standin-boot/default
    ;;
esac
"""


def write_flake(flake: Path, hosts: list[str]) -> None:
    """Write the stand-in flake into ``flake`` (the lab's flake repo) for ``hosts``."""
    import json

    flake.mkdir(parents=True, exist_ok=True)
    (flake / "flake.nix").write_text(FLAKE)
    (flake / "switch-to-configuration").write_text(SWITCH)
    import platform

    system = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    (flake / "hosts.json").write_text(json.dumps({"system": f"{system}-linux", "hosts": hosts}))


def set_knobs(flake: Path, host: str, *knobs: str) -> None:
    """Make ``host``'s next generation misbehave (``break-sshd``, ``fail-activation``); none: behave."""
    path = flake / "hosts" / host / "knobs"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}\n" for k in knobs))
