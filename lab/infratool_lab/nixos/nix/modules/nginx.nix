# services.nginx.enable and services.nginx.virtualHosts, with the names and
# types of nixpkgs nixos/modules/services/web-servers/nginx/default.nix,
# vhost-options.nix and location-options.nix (the subset a cache needs).
{
  lib,
  config,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.services.nginx;
  # nginx.conf for the virtual hosts, run as the lab service `nginx` with its
  # state in the host's private /run, /var/lib and /var/log.
  listenLine =
    l: "    listen ${l.addr}${if l.port != null then ":${toString l.port}" else ""}${if l.ssl then " ssl" else ""};\n";
  vhostText =
    name: v:
    "  server {\n"
    + lib.concatStrings (map listenLine v.listen)
    + "    server_name ${if v.serverName != null then v.serverName else name};\n"
    + (if v.root != null then "    root ${toString v.root};\n" else "")
    + lib.concatStrings (
      lib.mapAttrsToList (
        path: loc:
        "    location ${path} {\n"
        + (if loc.root != null then "      root ${toString loc.root};\n" else "")
        + (if loc.alias != null then "      alias ${toString loc.alias};\n" else "")
        + (if loc.proxyPass != null then "      proxy_pass ${loc.proxyPass};\n" else "")
        + (if loc.return != null then "      return ${toString loc.return};\n" else "")
        + loc.extraConfig
        + "    }\n"
      ) v.locations
    )
    + v.extraConfig
    + "  }\n";
  configFile = pkgs.writeText "nginx.conf" (
    "daemon off;\n"
    + "pid /run/nginx/nginx.pid;\n"
    + "error_log /var/log/nginx/error.log;\n"
    + "events { }\n"
    + "http {\n"
    + "  access_log /var/log/nginx/access.log;\n"
    + "  client_body_temp_path /var/lib/nginx/body;\n"
    + "  proxy_temp_path /var/lib/nginx/proxy;\n"
    + "  fastcgi_temp_path /var/lib/nginx/fastcgi;\n"
    + "  uwsgi_temp_path /var/lib/nginx/uwsgi;\n"
    + "  scgi_temp_path /var/lib/nginx/scgi;\n"
    + "  default_type application/octet-stream;\n"
    + "  types { text/x-nix-narinfo narinfo; text/plain nix-cache-info; }\n"
    + lib.concatStrings (lib.mapAttrsToList vhostText cfg.virtualHosts)
    + "}\n"
  );
  location = {
    options = {
      root = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      alias = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      index = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      proxyPass = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      return = mkOption {
        type = types.nullOr (types.oneOf [ types.str types.int ]);
        default = null;
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
  vhost =
    { name, ... }:
    {
      options = {
        serverName = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
        serverAliases = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        listen = mkOption {
          type = types.listOf (
            types.submodule {
              options = {
                addr = mkOption { type = types.str; };
                port = mkOption {
                  type = types.nullOr types.port;
                  default = null;
                };
                ssl = mkOption {
                  type = types.bool;
                  default = false;
                };
                proxyProtocol = mkOption {
                  type = types.bool;
                  default = false;
                };
                extraParameters = mkOption {
                  type = types.listOf types.str;
                  default = [ ];
                };
              };
            }
          );
          default = [ ];
        };
        root = mkOption {
          type = types.nullOr types.path;
          default = null;
        };
        default = mkOption {
          type = types.bool;
          default = false;
        };
        locations = mkOption {
          type = types.attrsOf (types.submodule location);
          default = { };
        };
        extraConfig = mkOption {
          type = types.lines;
          default = "";
        };
      };
    };
in
{
  options.services.nginx = {
    enable = lib.mkEnableOption "Nginx Web Server";
    virtualHosts = mkOption {
      type = types.attrsOf (types.submodule vhost);
      default = { };
      description = "Declarative vhost config.";
    };
  };

  config.systemd.services.nginx = lib.mkIf cfg.enable {
    description = "Nginx Web Server";
    wantedBy = [ "multi-user.target" ];
    preStart = "mkdir -p /run/nginx /var/log/nginx /var/lib/nginx";
    serviceConfig.ExecStart = "${pkgs.nginx}/bin/nginx -c ${configFile}";
  };
}
