{
  description = "infratool: plan-first automation for a NixOS fleet (secrets rotation, remote builders, binary cache, Secure Boot)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # The Python application, wrapped with sops on its PATH (nix/package.nix).
      packages = forAllSystems (pkgs: rec {
        infratool = pkgs.callPackage ./nix/package.nix { };
        default = infratool;
      });

      # nix run github:<owner>/infratool -- --help
      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/infratool";
          meta.description = "infratool command line";
        };
      });

      # nix develop: Python with the runtime and test dependencies, sops, age,
      # OpenSSH and Nix; `infratool` runs this checkout (python -m infratool).
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps:
              with ps;
              [
                fabric
                paramiko
                pyyaml
                cryptography
                structlog
                rich
                click
                pyrage
                mnemonic
                ruamel-yaml
                hvac
                bcrypt
                argon2-cffi
                pytest
                pytest-xdist
                hypothesis
                pynacl
              ]
              ++ pkgs.lib.optional (ps ? bech32) ps.bech32
            ))
            (pkgs.writeShellScriptBin "infratool" ''exec python3 -m infratool "$@"'')
            pkgs.sops
            pkgs.age
            pkgs.ssh-to-age
            pkgs.openssh
            pkgs.ruff
          ];
          shellHook = ''
            export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
          '';
        };
      });

      # services.infratool.rotation: the hardened service + timer of
      # `infratool timer render` (nix/module.nix), using this flake's package.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.infratool.rotation.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      overlays.default = final: _prev: {
        infratool = final.callPackage ./nix/package.nix { };
      };
    };
}
