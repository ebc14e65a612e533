# The SSH client side: programs.ssh.knownHosts and programs.ssh.extraConfig,
# with the names and types of nixpkgs nixos/modules/programs/ssh.nix
# (rendered into etc/ssh/ssh_known_hosts and etc/ssh/ssh_config).
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.programs.ssh = {
    extraConfig = mkOption {
      type = types.lines;
      default = "";
      description = "Extra configuration text prepended to ssh_config.";
    };
    knownHosts = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              certAuthority = mkOption {
                type = types.bool;
                default = false;
              };
              hostNames = mkOption {
                type = types.listOf types.str;
                default = [ name ] ++ config.extraHostNames;
              };
              extraHostNames = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              publicKey = mkOption {
                type = types.nullOr types.str;
                default = null;
              };
              publicKeyFile = mkOption {
                type = types.nullOr types.path;
                default = null;
              };
            };
          }
        )
      );
      default = { };
      description = "The set of system-wide known SSH hosts.";
    };
    knownHostsFiles = mkOption {
      type = types.listOf types.path;
      default = [ ];
    };
  };
}
