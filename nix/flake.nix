# NIO's Nix entry point: the nio-agent and nio-operator packages and the NixOS module
# that runs nio-agent on a managed host. The flake lives in nix/ but builds the Go
# modules of the whole repository, so use it through a reference that carries the
# whole tree: `github:homystack/nio?dir=nix` or `git+file:///path/to/nio?dir=nix`
# (a plain `path:./nix` copies only this directory).
{
  description = "NIO — NixOS Infrastructure Operator";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      vendorHashes = import ./vendor-hashes.nix;
      # The Go modules need Go 1.26 (go.mod); say which nixpkgs has it rather than
      # let callPackage complain of a missing argument.
      go126 = pkgs: pkgs.buildGo126Module or (throw
        "nio: this nixpkgs has no buildGo126Module (Go 1.26, which go.mod requires); follow nixos-unstable or NixOS >= 26.05 with inputs.nio.inputs.nixpkgs");
      version = "0.1.0-${self.shortRev or self.dirtyShortRev or "dev"}";
    in
    {
      packages = forAllSystems (pkgs: rec {
        nio-agent = pkgs.callPackage ./package.nix {
          inherit version;
          buildGo126Module = go126 pkgs;
          pname = "nio-agent";
          modRoot = "agent";
          subPackages = [ "cmd/nio-agent" ];
          vendorHash = vendorHashes.agent;
        };
        nio-operator = pkgs.callPackage ./package.nix {
          inherit version;
          buildGo126Module = go126 pkgs;
          pname = "nio-operator";
          modRoot = "operator";
          subPackages = [ "cmd/nio-operator" ];
          vendorHash = vendorHashes.operator;
        };
        # The command for people (nio logs -f, nio get, …), also as `kubectl nio`.
        nio = pkgs.callPackage ./package.nix {
          inherit version;
          buildGo126Module = go126 pkgs;
          pname = "nio";
          modRoot = "operator";
          subPackages = [ "cmd/nio" ];
          vendorHash = vendorHashes.operator;
          postInstall = "ln -s nio $out/bin/kubectl-nio";
        };
        default = nio-agent;
      });

      nixosModules.nio-agent = import ./module.nix { inherit self; };
      nixosModules.default = self.nixosModules.nio-agent;
    };
}
