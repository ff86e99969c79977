# Evaluates flake.nix's outputs offline, with a stub nixpkgs whose builder records
# its arguments instead of building: what flake.nix and package.nix hand to
# buildGo126Module, for every system, and what their overrideModAttrs makes of the
# vendor derivation's env. agent/internal/nixfiles' tests read the JSON:
#
#   nix-instantiate --eval --strict --json nix/tests/eval-flake.nix
#
# withGo126 = false: a nixpkgs without buildGo126Module, which must fail with a
# message that says which nixpkgs to use.
{ withGo126 ? true }:
let
  stubLib = import ./stub-lib.nix;
  genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
  lib = stubLib // {
    inherit genAttrs;
    # Records the source instead of copying it: nothing is built here.
    fileset = {
      unions = paths: paths;
      toSource = { root, fileset }: { inherit root; files = map toString fileset; };
    };
    licenses.asl20 = "asl20";
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };
  pkgsFor = system:
    let
      pkgs = {
        inherit lib;
        stdenv.hostPlatform.system = system;
        callPackage = fn: args:
          let f = import fn;
          in f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
      } // (if withGo126 then {
        buildGo126Module = args: { builder = "buildGo126Module"; inherit system args; };
      } else { });
    in pkgs;
  nixpkgs = { inherit lib; legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor; };

  flake = import ../flake.nix;
  outputs = flake.outputs { self = outputs // { shortRev = "0000000"; }; inherit nixpkgs; };

  # The vendor derivation's env as current nixpkgs builds it (inherited from the
  # package's env plus the builder's own), and as older nixpkgs did (none).
  currentModEnv = { GOTOOLCHAIN = "local"; GOOS = "linux"; GOARCH = "amd64"; GO111MODULE = "on"; CGO_ENABLED = "0"; };
  describe = p: {
    inherit (p) builder system;
    inherit (p.args) pname version modRoot subPackages vendorHash ldflags env doCheck;
    src = p.args.src.files;
    modEnvCurrent = (p.args.overrideModAttrs { env = currentModEnv; }).env;
    modEnvOld = (p.args.overrideModAttrs { }).env;
    mainProgram = p.args.meta.mainProgram;
  };
in
{
  description = flake.description;
  systems = builtins.attrNames outputs.packages;
  packages = builtins.mapAttrs (_: ps: {
    nio-agent = describe ps.nio-agent;
    nio-operator = describe ps.nio-operator;
    nio = describe ps.nio // { inherit (ps.nio.args) postInstall; };
    defaultIsAgent = ps.default.args.pname == "nio-agent";
  }) outputs.packages;
  vendorHashes = import ../vendor-hashes.nix;
  modules = builtins.attrNames outputs.nixosModules;
  moduleIsAModule = builtins.isFunction outputs.nixosModules.nio-agent;
  inherit currentModEnv;
}
