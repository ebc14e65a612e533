# The lab's NixOS stand-in: `nixosSystem` as in nixpkgs' flake
# (`nixpkgs.lib.nixosSystem { system; modules; specialArgs; }`), over the
# lab's own module system (./lib.nix) and option declarations (./modules).
# A stand-in for nixpkgs' module system and NixOS's modules, not NixOS: see
# docs/nixos-lab.md for which parts are real.
let
  lib = import ./lib.nix;
  baseModules = [
    ./modules/nix.nix
    ./modules/ssh.nix
    ./modules/users.nix
    ./modules/nginx.nix
    ./modules/systemd.nix
    ./modules/misc.nix
    ./modules/sops.nix
    ./modules/lanzaboote.nix
    ./modules/toplevel.nix
    ./modules/lab.nix
  ];
in
{
  inherit lib baseModules;
  nixosSystem =
    {
      system,
      modules,
      specialArgs ? { },
    }:
    let
      pkgs = import ./pkgs.nix { inherit system; };
      evaluated = lib.evalModules {
        modules = baseModules ++ modules;
        specialArgs = {
          inherit pkgs;
          # The toplevel renders this (every option the modules define), so a
          # type error in any definition fails the build.
          labDefinedConfig = evaluated.definedConfig;
        }
        // specialArgs;
      };
    in
    {
      inherit (evaluated) config options;
      inherit pkgs;
    };
}
