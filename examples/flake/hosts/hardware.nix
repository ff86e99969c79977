# worker-01's hardware: disks, boot loader, platform. A placeholder — replace it with
# what `nixos-generate-config --show-hardware-config` prints on the host (or, for
# fullInstall: true, with a disko layout: nixos-anywhere partitions the disks from it).
{ ... }:
{
  nixpkgs.hostPlatform = "x86_64-linux";

  boot.loader.grub.enable = true;
  boot.loader.grub.device = "/dev/sda";

  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
}
