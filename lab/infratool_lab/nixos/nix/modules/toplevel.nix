# system.build.toplevel: the lab's NixOS generation, a real derivation built
# by Nix with /bin/sh. It renders the evaluated configuration into what the
# host uses, as NixOS's modules do:
#   etc/nix/nix.conf, etc/nix/machines      (nixpkgs config/nix.nix, nix-remote-build.nix)
#   etc/ssh/ssh_known_hosts, etc/ssh/ssh_config   (programs/ssh.nix)
#   etc/ssh/authorized_keys.d/<user>        (services/networking/ssh/sshd.nix)
#   etc/<name> of environment.etc           (system/etc/etc.nix)
#   lab/services/<unit>                     units, run as lab services
#   lab/secrets.tsv                         sops-nix's manifest
#   lab/lanzaboote.json                     what lzbt would sign (nothing is signed)
#   sw/bin                                  environment.systemPackages
#   activate, bin/switch-to-configuration  the activation entry points
{
  lib,
  config,
  pkgs,
  labDefinedConfig,
  ...
}:
let
  inherit (lib)
    concatStringsSep
    concatMapStringsSep
    mapAttrsToList
    filterAttrs
    mkOption
    types
    ;
  inherit (builtins) attrNames toJSON;

  # nix.conf, as nixpkgs' config/nix.nix renders nix.settings.
  confValue =
    v:
    if v == null then
      ""
    else if builtins.isBool v then
      (if v then "true" else "false")
    else if builtins.isList v then
      concatMapStringsSep " " confValue v
    else
      toString v;
  nixConf =
    "# WARNING: this file is generated from the nix.* options in\n"
    + "# your NixOS configuration, typically\n"
    + "# /etc/nixos/configuration.nix.  Do not edit it!\n"
    + concatStringsSep "" (
      mapAttrsToList (n: v: "${n} = ${confValue v}\n") config.nix.settings
    )
    + config.nix.extraOptions;

  machines = concatStringsSep "" (
    map (
      m:
      concatStringsSep " " [
        "${if m.protocol != null then "${m.protocol}://" else ""}${
          if m.sshUser != null then "${m.sshUser}@" else ""
        }${m.hostName}"
        (
          if m.system != null then
            m.system
          else if m.systems != [ ] then
            concatStringsSep "," m.systems
          else
            "-"
        )
        (if m.sshKey != null then m.sshKey else "-")
        (toString m.maxJobs)
        (toString m.speedFactor)
        (
          let
            all = m.supportedFeatures ++ m.mandatoryFeatures;
          in
          if all == [ ] then "-" else concatStringsSep "," all
        )
        (if m.mandatoryFeatures == [ ] then "-" else concatStringsSep "," m.mandatoryFeatures)
        (if m.publicHostKey != null then m.publicHostKey else "-")
      ]
      + "\n"
    ) config.nix.buildMachines
  );

  knownHosts = concatStringsSep "" (
    mapAttrsToList (
      _: h:
      (if h.certAuthority then "@cert-authority " else "")
      + concatStringsSep "," h.hostNames
      + " "
      + (if h.publicKey != null then h.publicKey else builtins.readFile h.publicKeyFile)
      + "\n"
    ) config.programs.ssh.knownHosts
  );

  sshConfig = ''
    # Custom options from `extraConfig`, to override generated options
    ${config.programs.ssh.extraConfig}

    # Generated options from other settings
    Host *
    GlobalKnownHostsFile /etc/ssh/ssh_known_hosts
  '';

  usersWithKeys = filterAttrs (
    _: u: u.openssh.authorizedKeys.keys != [ ] || u.openssh.authorizedKeys.keyFiles != [ ]
  ) config.users.users;
  authorizedKeys =
    u:
    concatStringsSep "" (
      map (k: "${k}\n") u.openssh.authorizedKeys.keys
      ++ map builtins.readFile u.openssh.authorizedKeys.keyFiles
    );

  etcText = filterAttrs (_: e: e.enable && e.text != null) config.environment.etc;

  etc =
    {
      "nix/nix.conf" = nixConf;
      "ssh/ssh_known_hosts" = knownHosts;
      "ssh/ssh_config" = sshConfig;
    }
    // lib.optionalAttrs (config.nix.buildMachines != [ ]) { "nix/machines" = machines; }
    // lib.listToAttrs (
      mapAttrsToList (n: u: {
        name = "ssh/authorized_keys.d/${n}";
        value = authorizedKeys u;
      }) usersWithKeys
    )
    // lib.listToAttrs (
      mapAttrsToList (_: e: {
        name = e.target;
        value = e.text;
      }) etcText
    );

  # A unit, as the lab runs it: a sh script that execs the service.
  services = filterAttrs (
    _: s: s.enable && (s.script != "" || s.serviceConfig ? ExecStart)
  ) config.systemd.services;
  unitScript =
    name: s:
    let
      exec = s.serviceConfig.ExecStart or null;
      execLine = if builtins.isList exec then lib.last exec else exec;
    in
    "#!/bin/sh\n# unit ${name}.service: ${s.description}\n"
    # The activation runs a oneshot to its end (as systemd's start job waits for it).
    + "# lab-type: ${toString (s.serviceConfig.Type or "simple")}\nset -e\n"
    + concatStringsSep "" (
      mapAttrsToList (k: v: "export ${k}='${toString v}'\n") (filterAttrs (_: v: v != null) s.environment)
    )
    + (if s.path != [ ] then "export PATH=${concatMapStringsSep ":" (p: "${p}/bin") s.path}:$PATH\n" else "")
    + s.preStart
    + "\n"
    + (if execLine != null then "exec ${toString execLine}\n" else s.script + "\n");

  # Tab-separated lines for the activation's `read`; "-" stands for an empty
  # field (sh's `read` would merge consecutive tabs).
  row = fields: concatStringsSep "\t" (map (f: if f == "" || f == null then "-" else f) fields) + "\n";

  secretLines = concatStringsSep "" (
    mapAttrsToList (
      _: s:
      row [
        s.name
        s.key
        s.path
        s.format
        s.mode
        (if s.owner != null then s.owner else "root")
        s.group
        "${s.sopsFile}"
        (concatStringsSep "," (s.restartUnits ++ s.reloadUnits))
        (concatStringsSep "," config.sops.age.sshKeyPaths)
      ]
    ) (filterAttrs (_: s: !s.neededForUsers) config.sops.secrets)
  );

  userLines = concatStringsSep "" (
    mapAttrsToList (
      n: _:
      row [
        "group"
        n
        ""
        ""
        ""
      ]
    ) config.users.groups
    ++ mapAttrsToList (
      n: u:
      row [
        "user"
        n
        u.group
        u.home
        (
          if u.shell != null then
            "${u.shell}"
          else if u.useDefaultShell then
            "/bin/sh"
          else
            "/usr/sbin/nologin"
        )
      ]
    ) (filterAttrs (n: _: n != "root") config.users.users)
  );

  lanzaboote = config.boot.lanzaboote;
  wouldSign = toJSON {
    signer = "lanzaboote (lzbt), not run: the lab has no UEFI and signs nothing";
    pkiBundle = lanzaboote.pkiBundle;
    publicKeyFile = lanzaboote.publicKeyFile;
    privateKeyFile = lanzaboote.privateKeyFile;
    files = [
      "EFI/Linux/nixos-generation-<N>.efi (this generation's unified kernel image)"
      "EFI/systemd/systemd-bootx64.efi (lanzaboote stub)"
    ];
  };

  labConfig = toJSON {
    hostName = config.networking.hostName;
    firewall = {
      inherit (config.networking.firewall) enable allowedTCPPorts allowedUDPPorts;
    };
    units = attrNames services;
    timers = attrNames config.systemd.timers;
    secrets = attrNames config.sops.secrets;
    lanzaboote = lanzaboote.enable;
    systemPackages = map (p: p.name or (toString p)) config.environment.systemPackages;
  };

  # name in the toplevel -> (text, executable)
  files =
    lib.listToAttrs (
      mapAttrsToList (n: text: {
        name = "etc/${n}";
        value = {
          inherit text;
          exec = false;
        };
      }) etc
    )
    // lib.listToAttrs (
      mapAttrsToList (n: s: {
        name = "lab/services/${n}";
        value = {
          text = unitScript n s;
          exec = true;
        };
      }) services
    )
    // {
      "lab/etc-files" = {
        text = concatStringsSep "" (map (n: "${n}\n") (attrNames etc));
        exec = false;
      };
      "lab/users.tsv" = {
        text = userLines;
        exec = false;
      };
      "lab/tmpfiles" = {
        text = concatStringsSep "" (map (r: "${r}\n") config.systemd.tmpfiles.rules);
        exec = false;
      };
      "lab/secrets.tsv" = {
        text = secretLines;
        exec = false;
      };
      "lab/config.json" = {
        text = labConfig;
        exec = false;
      };
      # Every option the modules define, merged: rendering it type-checks
      # every definition.
      "lab/options.json" = {
        text = toJSON (removeAttrs labDefinedConfig [ "system" ]);
        exec = false;
      };
      "activate" = {
        text = builtins.readFile ../scripts/activate.sh;
        exec = true;
        self = true;
      };
      "bin/switch-to-configuration" = {
        text = builtins.readFile ../scripts/switch-to-configuration.sh;
        exec = true;
        self = true;
      };
      "bin/lab-install-secrets" = {
        text = "#!/bin/sh\n" + builtins.readFile ../scripts/install-secrets.sh;
        exec = true;
      };
      "bin/ssh-to-age" = {
        text = "#!/bin/sh\n" + builtins.readFile ../scripts/ssh-to-age.sh;
        exec = true;
      };
      "lab/sshd" = {
        text = if config.services.openssh.enable then "enabled\n" else "disabled\n";
        exec = false;
      };
      "nixos-version" = {
        text = "lab-stand-in\n";
        exec = false;
      };
    }
    // lib.listToAttrs (
      mapAttrsToList (n: v: {
        name = "lab/activation.d/${n}";
        value = {
          text = if builtins.isString v then v else v.text;
          exec = false;
        };
      }) config.system.activationScripts
    )
    // lib.optionalAttrs lanzaboote.enable {
      "lab/lanzaboote.json" = {
        text = wouldSign;
        exec = false;
      };
    };

  names = attrNames files;
  index = lib.listToAttrs (
    builtins.genList (i: {
      name = "file${toString i}";
      value = files.${builtins.elemAt names i}.text;
    }) (builtins.length names)
  );
  builder = ''
    set -eu
    mkdir -p "$out/bin" "$out/sw/bin"
    i=0
    for name in $fileNames; do
      eval "src=\$file''${i}Path"
      mkdir -p "$(dirname "$out/$name")"
      case " $selfFiles " in
        *" $name "*) printf '#!/bin/sh\nsystemConfig=%s\n' "$out" >"$out/$name"; cat "$src" >>"$out/$name" ;;
        *) cp "$src" "$out/$name" ;;
      esac
      i=$((i + 1))
    done
    for name in $execFiles; do chmod 0555 "$out/$name"; done
    for pkg in $systemPackages; do
      if [ -d "$pkg/bin" ]; then
        for f in "$pkg"/bin/*; do ln -sfn "$f" "$out/sw/bin/$(basename "$f")"; done
      fi
    done
  '';
in
{
  options.system.build.toplevel = mkOption {
    type = types.package;
    description = "The lab's NixOS generation (see this file's header).";
  };

  config.system.build.toplevel = derivation (
    {
      name = "nixos-system-${config.networking.hostName}-lab";
      system = pkgs.system;
      builder = "/bin/sh";
      args = [
        "-c"
        builder
      ];
      PATH = "/usr/bin:/bin";
      fileNames = concatStringsSep " " names;
      execFiles = concatStringsSep " " (lib.filter (n: files.${n}.exec) names);
      selfFiles = concatStringsSep " " (lib.filter (n: files.${n}.self or false) names);
      systemPackages = config.environment.systemPackages;
      passAsFile = attrNames index;
    }
    // index
  );
}
