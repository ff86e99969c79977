# Shared by the fixtures: a stand-in NixOS toplevel as a plain builtins.derivation.
# extraInputs: more derivation attributes, e.g. a dependency the system must wait for.
{ system, name, version, activation ? "ok", extraInputs ? { } }:
builtins.derivation ({
  inherit system;
  name = "nixos-system-${name}-${version}";
  builder = "/bin/sh";
  args = [ ./system-builder.sh ];
  systemName = name;
  fixtureVersion = version;
  inherit activation;
  switchScript = ./switch-to-configuration.sh;
} // extraInputs)
