# NixOS module: scheduled secrets rotation with infratool.
#
#   services.infratool.rotation = {
#     enable = true;
#     flake = "/var/lib/infratool/fleet";          # a checkout of the fleet repo
#     ageKeyFile = "/var/lib/infratool/age.key";   # the operator's age identity (0600, NOT in the store)
#     onCalendar = "Sun 03:00";
#   };
#
# It installs the same hardened infratool-rotate.service and .timer that
# `infratool timer render` prints — the very same text (see ./units.nix, checked
# against the Python renderer by tests/unit/test_onboard_flake.py), given to
# NixOS as `systemd.units.<name>.text`. NixOS ignores a unit's [Install]
# section, so the timer is enabled with `wantedBy` instead.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.infratool.rotation;
  # Characters systemd takes literally in every setting the path goes into (no
  # quoting, no %-specifier, no $-variable): such a path appears verbatim in the
  # units, exactly as `infratool timer render` writes it (infratool/rotation/timer.py).
  plainPath = p: builtins.match "/[A-Za-z0-9@+=:,./_-]*" p != null && builtins.match ".*/\\.\\.(/.*)?" p == null;
  # A newline would start a new directive, a trailing backslash join the next
  # line, a % expand as a specifier: `infratool timer render` refuses them too.
  plainValue = v: builtins.match "[^[:cntrl:]%\\]*" v != null && v != "";
  units = import ./units.nix {
    exe = "${cfg.package}/bin/infratool";
    inherit (cfg)
      flake
      inventory
      ageKeyFile
      onCalendar
      randomizedDelay
      ;
  };
in
{
  options.services.infratool.rotation = {
    enable = lib.mkEnableOption "scheduled rotation of the fleet's due secrets (`infratool secrets rotate --due`)";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The infratool package (the flake sets its own).";
    };

    flake = lib.mkOption {
      type = lib.types.str;
      example = "/var/lib/infratool/fleet";
      description = ''
        Absolute path of a checkout of the fleet repo (hosts.yaml, secrets/,
        playbooks/). The service works there and may write only there (sops
        files, rotation state).
      '';
    };

    inventory = lib.mkOption {
      type = lib.types.str;
      default = "${cfg.flake}/hosts.yaml";
      defaultText = lib.literalExpression ''"''${flake}/hosts.yaml"'';
      description = "The inventory the rotation runs against.";
    };

    ageKeyFile = lib.mkOption {
      type = lib.types.str;
      example = "/var/lib/infratool/age.key";
      description = ''
        The operator's age identity that decrypts the fleet's sops files. A
        string, not a Nix path, on purpose: a path would be copied into the
        world-readable Nix store. The service receives it through
        LoadCredential=, never in its environment.
      '';
    };

    onCalendar = lib.mkOption {
      type = lib.types.str;
      default = "daily";
      example = "Sun 03:00";
      description = "When to run: a systemd.time(7) calendar expression (OnCalendar=).";
    };

    randomizedDelay = lib.mkOption {
      type = lib.types.str;
      default = "1h";
      description = "RandomizedDelaySec= of the timer, so a fleet of controllers does not run at once.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = builtins.all plainPath [
          cfg.flake
          cfg.inventory
          cfg.ageKeyFile
        ];
        message = "services.infratool.rotation: flake, inventory and ageKeyFile must be absolute paths of plain characters ([A-Za-z0-9@+=:,./_-]) without '..'.";
      }
      {
        assertion = !(lib.hasPrefix builtins.storeDir cfg.ageKeyFile);
        message = "services.infratool.rotation.ageKeyFile must not be in the Nix store (it is world-readable there).";
      }
      {
        assertion = plainValue cfg.onCalendar && plainValue cfg.randomizedDelay;
        message = "services.infratool.rotation: onCalendar and randomizedDelay must not be empty nor contain control characters (newline...), '%' or a backslash.";
      }
    ];

    systemd.units."infratool-rotate.service".text = units."infratool-rotate.service";
    systemd.units."infratool-rotate.timer" = {
      text = units."infratool-rotate.timer";
      wantedBy = [ "timers.target" ];
    };
  };
}
