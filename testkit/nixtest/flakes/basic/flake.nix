# An input-less flake with two stand-in NixOS systems. Its "commit" is ./version.txt,
# so each version yields a different store path; ./activation.txt = "fail" makes
# switch-to-configuration fail.
{
  description = "nio test fixture: basic";
  outputs = { self }:
    let
      read = f: default:
        if builtins.pathExists f
        then builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f)
        else default;
      system = read ./system.txt "x86_64-linux";
      version = read ./version.txt "1";
      activation = read ./activation.txt "ok";
      mk = name: {
        config.system.build.toplevel = import ./system.nix {
          inherit system name version activation;
        };
      };
    in
    {
      nixosConfigurations.worker = mk "worker";
      nixosConfigurations.minimal = mk "minimal";
    };
}
