# An example repository of NixOS hosts for NIO: the flake a NixosConfiguration's
# gitRepo points at. Copy this directory to the root of your own Git repository,
# adapt hosts/, commit, and point the usage guide's nixosconfiguration-example.yaml
# (flake: ".#worker") at it.
{
  description = "NixOS hosts managed by NIO";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # NIO's flake lives in the nix/ directory of its repository. The agent needs Go
    # 1.26 to build: drop the `follows` if your nixpkgs is older than that.
    nio = {
      url = "github:homystack/nio?dir=nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, nio }:
    let
      # The NixosFleet web (examples/fleet.yaml) names each Machine's system
      # flake: ".#{hostname}": one system per host name, all from hosts/web.nix.
      web = hostname: nixpkgs.lib.nixosSystem {
        modules = [
          nio.nixosModules.nio-agent
          (import ./hosts/web.nix hostname)
        ];
      };
    in
    {
      # flake: ".#worker" — the usage guide's worker-01, running nio-agent.
      nixosConfigurations.worker = nixpkgs.lib.nixosSystem {
        modules = [
          nio.nixosModules.nio-agent
          ./hosts/worker.nix
        ];
      };

      # onRemoveFlake: ".#minimal" — what the host keeps running once its
      # NixosConfiguration is deleted. onRemoveFlake: "hosts/minimal.nix" switches to
      # the same system through the module file instead.
      nixosConfigurations.minimal = nixpkgs.lib.nixosSystem {
        modules = [ ./hosts/minimal.nix ];
      };

      nixosConfigurations.web-01 = web "web-01";
      nixosConfigurations.web-02 = web "web-02";
      nixosConfigurations.web-03 = web "web-03";
    };
}
