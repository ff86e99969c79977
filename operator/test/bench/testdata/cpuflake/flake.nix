# The NIO-vs-direct benchmark's fixture: an input-less flake whose stand-in NixOS
# toplevel does a fixed amount of CPU work (hashing ./work.txt MiB of zeros), so the
# build dominates an apply as it does on a real host. ./version.txt names the
# "commit": each value is a new derivation, built from scratch.
{
  description = "nio benchmark fixture: a system whose build does fixed CPU work";
  outputs = { self }:
    let
      read = f: default:
        if builtins.pathExists f
        then builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f)
        else default;
    in
    {
      nixosConfigurations.bench.config.system.build.toplevel = builtins.derivation {
        system = read ./system.txt "x86_64-linux";
        name = "nixos-system-bench-${read ./version.txt "0"}";
        builder = "/bin/sh";
        args = [ ./builder.sh ];
        workMiB = read ./work.txt "600";
        switchScript = ./switch-to-configuration.sh;
      };
    };
}
