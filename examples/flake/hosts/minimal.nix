# The removal system (onRemoveFlake: "hosts/minimal.nix" or ".#minimal"): what worker-01
# runs once its NixosConfiguration is deleted — reachable over SSH, nothing else, and
# no NIO agent. As a module file it is switched with
# `nixos-rebuild switch -I nixos-config=hosts/minimal.nix`, outside the flake: it may
# import only files of this repository (no flake inputs), and takes nixpkgs from the
# host's NIX_PATH (set by default on systems built from a flake).
{ ... }:
{
  imports = [ ./common.nix ];
}
