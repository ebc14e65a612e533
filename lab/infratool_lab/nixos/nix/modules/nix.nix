# nix.* — the options infratool's generated modules set, declared with the
# names and types of nixpkgs:
#   nix.package, nix.settings       nixos/modules/config/nix.nix
#   nix.buildMachines,              nixos/modules/config/nix-remote-build.nix
#   nix.distributedBuilds
# (declarations written for the lab, not copied; the toplevel renders them
# into etc/nix/nix.conf and etc/nix/machines as NixOS does).
{
  lib,
  config,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  # nix.nix's semanticConfType: a nix.conf value, or a list of them.
  confAtom =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        types.package
      ]
    )
    // {
      description = "Nix config atom (null, bool, int, float, str, path or package)";
    };
  semanticConfType = types.attrsOf (types.either confAtom (types.listOf confAtom));
  strList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
in
{
  options.nix = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to enable Nix (nixos/modules/config/nix.nix).";
    };
    package = mkOption {
      type = types.package;
      default = pkgs.nix;
      description = "The Nix package (the lab: Debian's nix in /usr/bin).";
    };
    settings = mkOption {
      type = types.submodule {
        freeformType = semanticConfType;
        options = {
          # The typed settings of nix.nix; any other key is free-form.
          max-jobs = mkOption {
            type = types.either types.int (types.enum [ "auto" ]);
            default = "auto";
          };
          cores = mkOption {
            type = types.int;
            default = 0;
          };
          sandbox = mkOption {
            type = types.either types.bool (types.enum [ "relaxed" ]);
            default = true;
          };
          auto-optimise-store = mkOption {
            type = types.bool;
            default = false;
          };
          extra-sandbox-paths = strList;
          # nixpkgs declares no default and adds cache.nixos.org with mkAfter;
          # the lab cannot reach it, so the stand-in starts from [ ].
          substituters = strList;
          require-sigs = mkOption {
            type = types.bool;
            default = true;
          };
          trusted-substituters = strList;
          trusted-public-keys = mkOption { type = types.listOf types.str; };
          trusted-users = mkOption { type = types.listOf types.str; };
          allowed-users = mkOption {
            type = types.listOf types.str;
            default = [ "*" ];
          };
          system-features = mkOption { type = types.listOf types.str; };
        };
      };
      default = { };
      description = "Configuration for Nix, see nix.conf(5).";
    };
    extraOptions = mkOption {
      type = types.lines;
      default = "";
      description = "Additional text appended to nix.conf.";
    };
    distributedBuilds = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to distribute builds to nix.buildMachines.";
    };
    buildMachines = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            hostName = mkOption { type = types.str; };
            protocol = mkOption {
              type = types.enum [
                null
                "ssh"
                "ssh-ng"
              ];
              default = "ssh";
            };
            system = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            systems = strList;
            sshUser = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            sshKey = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            maxJobs = mkOption {
              type = types.int;
              default = 1;
            };
            speedFactor = mkOption {
              type = types.numbers.positive;
              default = 1;
            };
            mandatoryFeatures = strList;
            supportedFeatures = strList;
            publicHostKey = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
          };
        }
      );
      default = [ ];
      description = "The machines distributed builds go to (/etc/nix/machines).";
    };
  };

  config.nix.settings = lib.mkMerge [
    # As nix.nix defines them: plain definitions, so a module's list adds to them.
    {
      trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      trusted-users = [ "root" ];
      system-features = lib.mkDefault [
        "nixos-test"
        "benchmark"
        "big-parallel"
        "kvm"
      ];
    }
    # nix-remote-build.nix: without distributed builds, no builders at all.
    (lib.mkIf (!config.nix.distributedBuilds) { builders = null; })
  ];
}
