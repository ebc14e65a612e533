# sops.*, with the names and types of sops-nix's modules/sops/default.nix
# (the secret submodule and the age key options). The lab's activation
# decrypts each secret with the host's SSH host key converted to age, as
# sops-install-secrets does (see ../activate-secrets.sh).
{ lib, config, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.sops;
  users = config.users.users;
  secret =
    { name, config, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        key = mkOption {
          type = types.str;
          default = if cfg.defaultSopsKey != null then cfg.defaultSopsKey else name;
        };
        path = mkOption {
          type = types.str;
          default =
            if config.neededForUsers then "/run/secrets-for-users/${config.name}" else "/run/secrets/${config.name}";
        };
        format = mkOption {
          type = types.enum [
            "yaml"
            "json"
            "binary"
            "dotenv"
            "ini"
          ];
          default = cfg.defaultSopsFormat;
        };
        mode = mkOption {
          type = types.str;
          default = "0400";
        };
        owner = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = 0;
        };
        group = mkOption {
          type = types.nullOr types.str;
          default = if config.owner != null then users.${config.owner}.group or null else null;
        };
        gid = mkOption {
          type = types.nullOr types.int;
          default = 0;
        };
        sopsFile = mkOption {
          type = types.path;
          default = cfg.defaultSopsFile;
        };
        restartUnits = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        reloadUnits = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        neededForUsers = mkOption {
          type = types.bool;
          default = false;
        };
      };
    };
in
{
  options.sops = {
    secrets = mkOption {
      type = types.attrsOf (types.submodule secret);
      default = { };
      description = "Path where the latest secrets are mounted to.";
    };
    defaultSopsFile = mkOption {
      type = types.path;
      description = "Default sops file used for all secrets.";
    };
    defaultSopsFormat = mkOption {
      type = types.str;
      default = "yaml";
    };
    defaultSopsKey = mkOption {
      type = types.nullOr types.str;
      default = null;
    };
    validateSopsFiles = mkOption {
      type = types.bool;
      default = true;
    };
    age = {
      keyFile = mkOption {
        type = types.nullOr types.externalPath;
        default = null;
      };
      sshKeyPaths = mkOption {
        type = types.listOf types.path;
        default = [ "/etc/ssh/ssh_host_ed25519_key" ];
      };
      generateKey = mkOption {
        type = types.bool;
        default = false;
      };
    };
  };
}
