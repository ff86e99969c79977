# What every system of this host has, the removal system included: the hardware, and
# SSH for the operator (and people) to log in.
{ ... }:
{
  imports = [ ./hardware.nix ];

  networking.hostName = "worker-01";

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };

  # The public half of the Secret worker-ssh-key (the Machine's sshKeySecretRef): the
  # operator logs in as root (the Machine's sshUser) with it.
  users.users.root.openssh.authorizedKeys.keys = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLACEHOLDERREPLACEWITHYOUROWNKEYxxxxxxxxxxxx nio-operator"
  ];

  # nio-agent and nixos-rebuild build the flake on the host.
  nix.settings.experimental-features = [ "nix-command" "flakes" ];

  system.stateVersion = "25.11";
}
