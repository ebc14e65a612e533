# users.users / users.groups, with the names and types of nixpkgs
# nixos/modules/config/users-groups.nix, and users.users.<name>.openssh.*
# from nixos/modules/services/networking/ssh/sshd.nix (which extends the
# users.users submodule there; the lab declares both in one place).
{ lib, ... }:
let
  inherit (lib) mkOption types;
  userOptions =
    { name, config, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        description = mkOption {
          type = types.str;
          default = "";
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
        };
        group = mkOption {
          type = types.str;
          default = "";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        home = mkOption {
          type = types.path;
          default = if name == "root" then "/root" else "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
        useDefaultShell = mkOption {
          type = types.bool;
          default = false;
        };
        shell = mkOption {
          type = types.nullOr (types.either types.package types.path);
          default = null;
        };
        openssh.authorizedKeys = {
          keys = mkOption {
            type = types.listOf types.singleLineStr;
            default = [ ];
          };
          keyFiles = mkOption {
            type = types.listOf types.path;
            default = [ ];
          };
        };
      };
    };
in
{
  options.users = {
    users = mkOption {
      type = types.attrsOf (types.submodule userOptions);
      default = { };
      description = "Additional user accounts to be created automatically by the system.";
    };
    groups = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              name = mkOption {
                type = types.str;
                default = name;
              };
              gid = mkOption {
                type = types.nullOr types.int;
                default = null;
              };
              members = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            };
          }
        )
      );
      default = { };
    };
  };
}
