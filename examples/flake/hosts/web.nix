# web-01, web-02 and web-03: the Machines of the NixosFleet web (examples/fleet.yaml,
# flake ".#{hostname}"). flake.nix makes one system per host name with this function:
# the worker's system (nio-agent, nginx) under the host's own name, answering what the
# fleet's http health check asks for.
hostname:
{ lib, ... }:
{
  imports = [ ./worker.nix ];

  # common.nix names the host worker-01.
  networking.hostName = lib.mkForce hostname;

  # The fleet's health check GETs http://127.0.0.1/ and expects 200.
  services.nginx.virtualHosts.${hostname} = {
    default = true;
    locations."/".return = "200 \"${hostname}\\n\"";
  };
}
