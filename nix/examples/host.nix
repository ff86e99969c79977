# A managed host's NixOS configuration with the agent enabled. Import the module from
# the NIO flake (inputs.nio.nixosModules.nio-agent) in the host's flake.
{ ... }:
{
  services.nio-agent = {
    enable = true;
    port = 9443;
    openFirewall = true;
  };
}
