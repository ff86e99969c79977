# A NixOS configuration module stand-in, built through the stub <nixpkgs/nixos> the
# way nixos-rebuild -I nixos-config=<file> builds a real one.
{ ... }:
{
  networking.hostName = "worker";
  nio.fixtureVersion = builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile ./version.txt);
}
