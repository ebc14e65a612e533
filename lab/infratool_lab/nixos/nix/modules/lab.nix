# What every lab host needs whatever infratool generates: Debian's Nix in a
# private store has no sandbox, no nixbld group and no reachable public cache.
# (A real NixOS host has none of this: its hardware-configuration and
# configuration.nix take this module's place.)
{ lib, ... }:
{
  nix.settings = {
    sandbox = lib.mkDefault false;
    build-users-group = lib.mkDefault "";
  };
  networking.firewall.enable = lib.mkDefault false;
  # Every lab host is reached over SSH (a real host's configuration.nix says so too).
  services.openssh.enable = lib.mkDefault true;
}
