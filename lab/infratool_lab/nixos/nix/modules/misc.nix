# Small option sets of NixOS base modules, with nixpkgs' names and types:
#   networking.hostName                 nixos/modules/tasks/network-interfaces.nix
#   networking.firewall.*               nixos/modules/services/networking/firewall.nix
#   environment.systemPackages          nixos/modules/config/system-path.nix
#   environment.etc                     nixos/modules/system/etc/etc.nix (text only)
#   boot.loader.systemd-boot.enable     nixos/modules/system/boot/loader/systemd-boot/systemd-boot.nix
#   system.stateVersion                 nixos/modules/misc/version.nix
#   assertions, warnings               nixos/modules/misc/assertions.nix
#   services.openssh.enable             nixos/modules/services/networking/ssh/sshd.nix
#   system.activationScripts            nixos/modules/system/activation/activation-script.nix
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options = {
    networking.hostName = mkOption {
      type = types.str;
      default = "nixos";
    };
    networking.firewall = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      allowedUDPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "The set of packages that appear in /run/current-system/sw.";
    };
    environment.etc = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              enable = mkOption {
                type = types.bool;
                default = true;
              };
              target = mkOption {
                type = types.str;
                default = name;
              };
              text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              mode = mkOption {
                type = types.str;
                default = "symlink";
              };
            };
          }
        )
      );
      default = { };
    };
    boot.loader.systemd-boot.enable = mkOption {
      type = types.bool;
      default = false;
    };
    system.stateVersion = mkOption {
      type = types.str;
      default = "25.11";
    };
    # The lab's sshd is the host itself (it cannot be restarted by a unit):
    # a generation with sshd disabled freezes it (SIGSTOP), so the host stops
    # answering as if sshd were gone; a generation with it enabled thaws it.
    services.openssh.enable = lib.mkEnableOption "the OpenSSH secure shell daemon";
    # Run by the activation in name order (the lab ignores `deps`); a failing
    # one fails the switch after the rest has run, as on NixOS.
    system.activationScripts = mkOption {
      type = types.attrsOf (
        types.either types.str (
          types.submodule {
            options = {
              deps = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              text = mkOption { type = types.lines; };
              supportsDryActivation = mkOption {
                type = types.bool;
                default = false;
              };
            };
          }
        )
      );
      default = { };
    };
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };
}
