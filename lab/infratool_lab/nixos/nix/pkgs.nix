# The few packages infratool's generated modules and the lab's modules use
# (`pkgs.nix`, `pkgs.sbctl`, `pkgs.writeShellScript`, ...), as real
# derivations built by Nix with /bin/sh: nixpkgs cannot be downloaded here.
# The "packages" link to the tools the lab host already has (Debian's nix in
# /usr/bin, nginx in /usr/sbin, the lab's sbctl emulator and sops in
# /usr/local/sbin), so the store paths a module names exist on the host.
{ system }:
let
  shell =
    name: script: extra:
    derivation (
      {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-c"
          script
        ];
        PATH = "/usr/bin:/bin";
      }
      // extra
    );
  # A package whose bin/ links to tools the lab host has.
  linked =
    name: dir: tools:
    shell name ''
      mkdir -p "$out/bin"
      for t in ${tools}; do ln -s "${dir}/$t" "$out/bin/$t"; done
    '' { };
  writeFile =
    executable: name: text:
    shell name ''
      cp "$textPath" "$out"
      ${if executable then ''chmod 0555 "$out"'' else ""}
    '' {
      inherit text;
      passAsFile = [ "text" ];
    };
in
{
  inherit system;
  nix =
    linked "nix-2.8-lab" "/usr/bin"
      "nix nix-build nix-channel nix-collect-garbage nix-copy-closure nix-daemon nix-env nix-hash nix-instantiate nix-shell nix-store"
    // {
      version = "2.8.0";
    };
  nginx = linked "nginx-lab" "/usr/sbin" "nginx";
  sbctl = linked "sbctl-lab-emulator" "/usr/local/sbin" "sbctl";
  sops = linked "sops-lab" "/usr/local/sbin" "sops";
  coreutils = linked "coreutils-lab" "/usr/bin" "cat chmod chown cp ln mkdir mv rm";
  writeText = writeFile false;
  writeScript = writeFile true;
  writeShellScript = name: text: writeFile true name "#!/bin/sh\n${text}";
}
