# Stand-in for nixpkgs/nixos/default.nix: evaluates <nixos-config> and returns
# { system = <toplevel>; }, so `nix-build '<nixpkgs/nixos>' -A system
# -I nixos-config=<file>` works offline without nixpkgs.
{ configuration ? import <nixos-config>
, system ? builtins.currentSystem
}:
let
  config = if builtins.isFunction configuration then configuration { } else configuration;
in
{
  system = import ../system.nix {
    inherit system;
    name = config.networking.hostName;
    version = config.nio.fixtureVersion;
  };
}
