# Evaluates, but the build of the toplevel fails after printing recognisable lines.
{
  description = "nio test fixture: failing build";
  outputs = { self }:
    let
      read = f: default:
        if builtins.pathExists f
        then builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f)
        else default;
    in
    {
      nixosConfigurations.worker.config.system.build.toplevel = builtins.derivation {
        system = read ./system.txt "x86_64-linux";
        name = "nixos-system-worker-broken-${read ./version.txt "1"}";
        builder = "/bin/sh";
        args = [ "-c" "echo 'nio-fixture: compiling the world'; echo 'nio-fixture: error: the build fails on purpose' >&2; exit 1" ];
      };
    };
}
