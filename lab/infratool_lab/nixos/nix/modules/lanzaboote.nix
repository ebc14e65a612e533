# boot.lanzaboote.*, with the names and types of lanzaboote's
# nix/modules/lanzaboote.nix. The lab's toplevel signs nothing: it records
# in lanzaboote.json what lzbt would sign with which key.
{ lib, config, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.boot.lanzaboote;
in
{
  options.boot.lanzaboote = {
    enable = lib.mkEnableOption "Enable the LANZABOOTE";
    configurationLimit = mkOption {
      type = types.nullOr types.int;
      default = null;
    };
    pkiBundle = mkOption {
      type = types.nullOr types.externalPath;
      description = "PKI bundle containing db, PK, KEK";
    };
    publicKeyFile = mkOption {
      type = types.path;
      default = "${cfg.pkiBundle}/keys/db/db.pem";
    };
    privateKeyFile = mkOption {
      type = types.path;
      default = "${cfg.pkiBundle}/keys/db/db.key";
    };
    sortKey = mkOption {
      type = types.str;
      default = "lanza";
    };
  };
}
