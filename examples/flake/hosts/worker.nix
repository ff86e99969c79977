# worker-01 (flake: ".#worker"): NIO's agent and what the host is for.
{ ... }:
let
  # A NixosConfiguration's inline and nixosFacter additionalFiles are written into the
  # source tree before the build; this is the usage guide's config/custom.nix.
  # Whatever the build reads from them is copied into the world-readable Nix store.
  # Its secretRef files are not: the host keeps them in /run/nio-secrets/current/,
  # and the source gets nio-secrets.nix naming them, for options read at run time:
  #   passwordFile = (import ../nio-secrets.nix)."secrets/database-password";
  custom = ../config/custom.nix;
in
{
  imports = [ ./common.nix ] ++ (if builtins.pathExists custom then [ custom ] else [ ]);

  # The agent the operator drives over mTLS (the Machine's agent.port, 9443 by
  # default). The operator delivers its certificates over SSH, or in nixos-anywhere's
  # --extra-files at install; until then it answers nothing and NIO applies over SSH.
  services.nio-agent = {
    enable = true;
    port = 9443;
    openFirewall = true;
  };

  services.nginx.enable = true;
  networking.firewall.allowedTCPPorts = [ 80 ];
}
