# services.nio-agent: runs nio-agent, the daemon NIO's operator drives over mTLS, on a
# NixOS host. The operator delivers tls/{ca.crt,tls.crt,tls.key} (over SSH, or as
# nixos-anywhere --extra-files at install) into tlsDir.
#
# The unit's static settings and hardening live in agent-unit.json, read here and by
# testkit/agentunit, which renders the same unit for the test host: what is tested is
# what NixOS runs. This file adds only what depends on the options. Keep the two
# renderings in step: testkit/agentunit's tests evaluate this module (with the stub
# lib of tests/) and compare.
{ self }:
{ config, lib, pkgs, utils, ... }:

let
  cfg = config.services.nio-agent;
  inherit (lib) mkOption mkEnableOption mkIf types;

  spec = builtins.fromJSON (builtins.readFile ./agent-unit.json);

  # Flags the options own: set twice, the last one wins and the sandbox no longer
  # matches what the agent does (a --state-dir outside the writable paths, activation
  # inside the sandbox with --systemd-run=false).
  ownedFlags = [ "listen" "tls-dir" "state-dir" "facter-path" "log-level" "log-format" "systemd-run" ];
  flagName = arg:
    let m = builtins.match "--?([a-z-]+)(=.*)?" arg;
    in if m == null then null else builtins.head m;
  ownedIn = args: builtins.filter (arg: builtins.elem (flagName arg) ownedFlags) args;

  # What a directory option must be for the unit to make it exist and writable before
  # the agent starts. Each message names the option; Go's agentunit.Check returns the
  # same ones.
  under = dir: p: p == dir || lib.hasPrefix "${dir}/" p;
  hiddenDirs = [ "/tmp" "/var/tmp" "/home" "/root" "/run/user" "/proc" "/sys" "/dev" "/nix/store" ];
  dirProblems = name: p:
    if builtins.match "(/[A-Za-z0-9._+@-]+)+" p == null then
      [ "services.nio-agent.${name} = \"${p}\": must be an absolute path of letters, digits and . _ + @ - (no spaces, %, or trailing slash), other than /" ]
    else if builtins.match "(.*/)?\\.\\.?(/.*)?" p != null then
      [ "services.nio-agent.${name} = \"${p}\": must not contain . or .. components" ]
    else if builtins.any (d: under d p) hiddenDirs then
      [ "services.nio-agent.${name} = \"${p}\": is under a directory the unit's sandbox hides or makes private (${lib.concatStringsSep ", " hiddenDirs})" ]
    else if p == "/var/lib" then
      [ "services.nio-agent.${name} = \"${p}\": must be a directory of its own, not /var/lib" ]
    else [ ];
  problems = dirProblems "stateDir" cfg.stateDir ++ dirProblems "tlsDir" cfg.tlsDir
    ++ map (arg: "services.nio-agent.extraArgs: \"${arg}\" is set by the module; use its options (listenAddress, port, stateDir, tlsDir, facterPackage, logLevel) instead, --systemd-run is required by the sandbox") (ownedIn cfg.extraArgs);

  # A directory under /var/lib is a StateDirectory=: systemd creates it before every
  # start and makes it writable despite ProtectSystem=strict. Anything else is created
  # by tmpfiles (at boot and at every activation) and listed in ReadWritePaths with
  # '-', so a directory removed behind systemd's back fails the agent with a message
  # rather than the unit with 226/NAMESPACE.
  dirs = lib.unique [ cfg.stateDir cfg.tlsDir ];
  inVarLib = p: lib.hasPrefix "/var/lib/" p;
  stateDirectories = map (lib.removePrefix "/var/lib/") (builtins.filter inVarLib dirs);
  otherDirs = builtins.filter (p: !(inVarLib p)) dirs;

  listenHost =
    if lib.hasInfix ":" cfg.listenAddress && !(lib.hasPrefix "[" cfg.listenAddress)
    then "[${cfg.listenAddress}]" else cfg.listenAddress;
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
      description = "nixos-facter, run for the Facts RPC (through systemd-run, outside the agent's sandbox).";
    };

    listenAddress = mkOption {
      type = types.str;
      default = "";
      example = "10.0.0.5";
      description = "Address to listen on; empty means every address. An IPv6 address may be given without brackets.";
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
      description = "Source archive cache, per-operation work directories and the last operation record. Created before the unit starts (StateDirectory= under /var/lib, tmpfiles elsewhere).";
    };

    tlsDir = mkOption {
      type = types.path;
      default = "/var/lib/nio-agent/tls";
      description = "Holds ca.crt (the operator CA), tls.crt and tls.key. Renewed certificates are written back here. The unit starts only once tls.crt exists (the operator restarts it after delivering the identity).";
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
      description = "More nio-agent command-line arguments (not the flags the other options set). Escaped for systemd: % and $ are literal.";
    };
  };

  config = mkIf cfg.enable {
    assertions = map (message: { assertion = false; inherit message; }) problems;

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];

    systemd.tmpfiles.rules = map (p: "d ${p} 0700 root root - -") otherDirs;

    systemd.services.nio-agent = {
      description = spec.unit.Description;
      after = spec.unit.After;
      wants = spec.unit.Wants;
      wantedBy = spec.install.WantedBy;
      # No condition on the TLS identity: before the operator has delivered it, the
      # agent runs and waits for it (and says so once), rather than being skipped or
      # restarted every RestartSec.
      unitConfig = removeAttrs spec.unit [ "Description" "After" "Wants" ];

      # switch-to-configuration restarts changed units and waits for them, while a
      # stopping agent waits for the activation it started: restarting the agent from
      # its own switch would deadlock until TimeoutStopSec. A new agent version
      # therefore takes effect at the next boot or `systemctl restart nio-agent`.
      restartIfChanged = false;

      # git: flake inputs of type git+… are fetched by the agent's nix client.
      path = [ config.nix.package pkgs.gitMinimal cfg.facterPackage config.systemd.package ];
      environment = spec.environment // {
        # Module-file targets build <nixpkgs/nixos> like nixos-rebuild does.
        NIX_PATH = lib.concatStringsSep ":" config.nix.nixPath;
      };

      serviceConfig = spec.service // {
        # utils.escapeSystemdExecArgs, not shell quoting: systemd would expand % and
        # $ in extraArgs, and does not unquote '…' as a shell does.
        ExecStart = utils.escapeSystemdExecArgs ([
          (lib.getExe cfg.package)
          "--listen=${listenHost}:${toString cfg.port}"
          "--tls-dir=${cfg.tlsDir}"
          "--state-dir=${cfg.stateDir}"
          "--facter-path=${lib.getExe cfg.facterPackage}"
          "--log-level=${cfg.logLevel}"
        ] ++ spec.args ++ cfg.extraArgs);
        ReadWritePaths = spec.service.ReadWritePaths ++ map (p: "-${p}") otherDirs;
      } // lib.optionalAttrs (stateDirectories != [ ]) {
        StateDirectory = stateDirectories;
      };
    };
  };
}
