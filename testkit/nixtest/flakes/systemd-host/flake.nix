# A stand-in NixOS system for the systemd test host (operator/test/harness, SystemdHost):
# a plain builtins.derivation whose bin/switch-to-configuration does, in small, what
# NixOS's does on a systemd host — see host-switch-to-configuration.sh. Unlike the other
# fixtures it has a locked input: fixture-lib, a git repository on the host itself
# (SystemdHostLibRepo), so building it needs what a real host's flakes need from the
# agent's unit: git and a writable Nix cache. The flake.lock is made on the host by
# the harness (nix flake lock), then committed with the rest.
#
# Variable files: version.txt (the "commit"), kernel.txt (the kernel the system links:
# a new one needs a reboot), activation.txt ("fail" fails the activation),
# activation-delay.txt (seconds the activation takes), hold.txt ("yes": the first
# activation of the system waits until /run/nio-fixture/release exists), service.txt
# (the system's nio-fixture-web.service: "none", "ok" — runs until stopped — or
# "crash" — starts fine, then exits 1 a second later, as a service that crashes on
# its new configuration does).
{
  description = "nio test fixture: systemd-host";
  inputs.fixture-lib.url = "git+file:///srv/nio-fixture-lib";
  outputs = { self, fixture-lib }:
    let
      read = f: default:
        if builtins.pathExists f
        then builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f)
        else default;
      mk = name: {
        config.system.build.toplevel = builtins.derivation {
          system = read ./system.txt "x86_64-linux";
          name = "nixos-system-${name}-${read ./version.txt "1"}";
          builder = "/bin/sh";
          args = [ ./host-builder.sh ];
          fixtureVersion = read ./version.txt "1";
          kernelVersion = read ./kernel.txt "1";
          activation = read ./activation.txt "ok";
          delay = read ./activation-delay.txt "0";
          hold = read ./hold.txt "no";
          service = read ./service.txt "none";
          libGreeting = fixture-lib.lib.greeting;
          switchScript = ./host-switch-to-configuration.sh;
        };
      };
    in
    {
      nixosConfigurations.host = mk "host";
    };
}
