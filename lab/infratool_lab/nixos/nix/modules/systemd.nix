# systemd.services, systemd.timers and systemd.tmpfiles.rules, with the
# names and types of nixpkgs nixos/lib/systemd-unit-options.nix,
# nixos/modules/system/boot/systemd.nix and
# nixos/modules/system/boot/systemd/tmpfiles.nix (the common unit options).
# The lab has no systemd: a service with `script` or ExecStart runs as a lab
# service that activation (re)starts; timers are rendered, not run.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  # systemd-unit-options.nix's unitOption: an atom or a list of atoms.
  atom = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    types.package
  ];
  unitOption = types.either atom (types.listOf atom) // {
    description = "systemd option";
  };
  names = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  common = {
    enable = mkOption {
      type = types.bool;
      default = true;
    };
    description = mkOption {
      type = types.str;
      default = "";
    };
    wantedBy = names;
    requiredBy = names;
    wants = names;
    requires = names;
    after = names;
    before = names;
    partOf = names;
    unitConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
    restartTriggers = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
  };
  service = {
    options = common // {
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      path = mkOption {
        type = types.listOf (types.oneOf [ types.package types.str ]);
        default = [ ];
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      postStart = mkOption {
        type = types.lines;
        default = "";
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startAt = mkOption {
        type = types.either types.str (types.listOf types.str);
        default = [ ];
      };
    };
  };
  timer = {
    options = common // {
      timerConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
    };
  };
in
{
  options.systemd = {
    services = mkOption {
      type = types.attrsOf (types.submodule service);
      default = { };
      description = "Definition of systemd service units.";
    };
    timers = mkOption {
      type = types.attrsOf (types.submodule timer);
      default = { };
      description = "Definition of systemd timer units.";
    };
    tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Rules for creation, deletion and cleaning of volatile and temporary files.";
    };
  };
}
