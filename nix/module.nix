# services.nio-agent: runs nio-agent, the daemon NIO's operator drives over mTLS, on a
# NixOS host. The operator delivers tls/{ca.crt,tls.crt,tls.key} (over SSH, or as
# nixos-anywhere --extra-files at install) into tlsDir.
{ self }:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.nio-agent;
  inherit (lib) mkOption mkEnableOption mkIf types;
in
{
  options.services.nio-agent = {
    enable = mkEnableOption "nio-agent, the NIO operator's agent on this host";

    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.nio-agent;
      defaultText = lib.literalExpression "nio.packages.\${system}.nio-agent";
      description = "The nio-agent package.";
    };

    facterPackage = mkOption {
      type = types.package;
      default = pkgs.nixos-facter;
      defaultText = lib.literalExpression "pkgs.nixos-facter";
      description = "nixos-facter, run for the Facts RPC.";
    };

    listenAddress = mkOption {
      type = types.str;
      default = "";
      example = "10.0.0.5";
      description = "Address to listen on; empty means every address.";
    };

    port = mkOption {
      type = types.port;
      default = 9443;
      description = "TCP port of the agent (the Machine's `agent.port`).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall. Only the operator's client certificate is accepted, but exposure is still your call.";
    };

    stateDir = mkOption {
      type = types.path;
      default = "/var/lib/nio-agent";
      description = "Source archive cache, per-operation work directories and the last operation record.";
    };

    tlsDir = mkOption {
      type = types.path;
      default = "/var/lib/nio-agent/tls";
      description = "Holds ca.crt (the operator CA), tls.crt and tls.key. Renewed certificates are written back here.";
    };

    logLevel = mkOption {
      type = types.enum [ "debug" "info" "warn" "error" ];
      default = "info";
      description = "Log level.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--max-source-bytes=268435456" ];
      description = "More nio-agent command-line arguments.";
    };
  };

  config = mkIf cfg.enable {
    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];

    systemd.services.nio-agent = {
      description = "NIO agent";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      wants = [ "network-online.target" ];

      # switch-to-configuration restarts changed units and waits for them, while a
      # stopping agent waits for the activation it started: restarting the agent from
      # its own switch would deadlock until TimeoutStopSec. A new agent version
      # therefore takes effect at the next boot or `systemctl restart nio-agent`.
      restartIfChanged = false;

      path = [ config.nix.package cfg.facterPackage config.systemd.package ];
      environment = {
        # Builds go through nix-daemon, so the agent itself needs no write access
        # to /nix/store.
        NIX_REMOTE = "daemon";
        # Module-file targets build <nixpkgs/nixos> like nixos-rebuild does.
        NIX_PATH = lib.concatStringsSep ":" config.nix.nixPath;
      };

      serviceConfig = {
        ExecStart = lib.escapeShellArgs ([
          (lib.getExe cfg.package)
          "--listen=${cfg.listenAddress}:${toString cfg.port}"
          "--tls-dir=${cfg.tlsDir}"
          "--state-dir=${cfg.stateDir}"
          "--facter-path=${lib.getExe cfg.facterPackage}"
          "--log-format=json"
          "--log-level=${cfg.logLevel}"
        ] ++ cfg.extraArgs);
        Restart = "on-failure";
        RestartSec = "5s";
        # SIGTERM: the agent stops taking operations and waits for the running one
        # (build, activation, confirm window) before it exits.
        KillMode = "mixed";
        TimeoutStopSec = "30min";

        # Root, because it sets the system profile and starts activation. The
        # activation itself runs in a transient unit (systemd-run) outside this
        # sandbox; this unit only needs the state dir and the profile links.
        User = "root";
        UMask = "0077";
        StateDirectory = "nio-agent";
        StateDirectoryMode = "0700";
        ReadWritePaths = [ cfg.stateDir cfg.tlsDir "/nix/var/nix/profiles" "/nix/var/nix/gcroots" ];
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        NoNewPrivileges = true;
        CapabilityBoundingSet = [ "" ];
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
      };
    };
  };
}
