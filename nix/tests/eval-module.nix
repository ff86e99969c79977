# Evaluates module.nix offline, with the stub lib, pkgs and utils of this directory,
# for the options given as JSON, and returns the unit as sections of "Key" → [values]
# (the lines the unit file would hold), the tmpfiles rules and the failed assertions.
# testkit/agentunit's tests run it with nix-instantiate --eval --strict --json and
# compare with what the Go renderer makes of the same options.
#
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix \
#     --argstr optionsJSON '{"services":{"stateDir":"/srv/nio"}}'
#
# optionsJSON: { services = <services.nio-agent values over the defaults>;
#                nixPath = [ … ]; }
# module: the module file (a test points it at a copy with an altered JSON).
{ optionsJSON ? "{}", module ? ../module.nix }:
let
  lib = import ./stub-lib.nix;
  utils = import ./stub-utils.nix { inherit lib; };

  stubPackage = name: exe: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = exe;
  };
  pkgs = {
    stdenv.hostPlatform.system = "x86_64-linux";
    nixos-facter = stubPackage "nixos-facter" "nixos-facter";
    gitMinimal = stubPackage "git-minimal" "git";
  };
  self.packages.x86_64-linux.nio-agent = stubPackage "nio-agent" "nio-agent";

  given = builtins.fromJSON optionsJSON;
  evaluated = import module { inherit self; } { inherit config lib pkgs utils; };
  # The options do not depend on config, so reading their defaults here is not a
  # cycle: config is only forced once the module's config is.
  defaults = builtins.mapAttrs (_: o: o.default) evaluated.options.services.nio-agent;
  config = {
    services.nio-agent = defaults // { enable = true; } // (given.services or { });
    nix.package = stubPackage "nix" "nix";
    nix.nixPath = given.nixPath or [ "nixpkgs=/nix/var/nix/profiles/per-user/root/channels/nixos" ];
    systemd.package = stubPackage "systemd" "systemctl";
  };

  # mkIf, as the module system would apply it.
  resolve = v:
    if builtins.isAttrs v && (v._type or "") == "if" then (if v.condition then resolve v.content else null)
    else if builtins.isAttrs v && (v.type or "") != "derivation" then
      let r = builtins.mapAttrs (_: resolve) v;
      in removeAttrs r (builtins.filter (n: r.${n} == null) (builtins.attrNames r))
    else v;
  out = resolve evaluated.config;
  svc = out.systemd.services.nio-agent;

  # How NixOS writes a unit setting: a list is one line per element, a bool is
  # true/false.
  lines = v:
    if builtins.isList v then map toString v
    else if builtins.isBool v then [ (if v then "true" else "false") ]
    else [ (toString v) ];
  section = attrs: builtins.mapAttrs (_: lines) attrs;

  # NixOS puts PATH=<bin dirs of path> (then its defaults and the sbin dirs) and
  # every environment entry as Environment=<JSON string>.
  pathDirs = map (p: "${p}/bin") svc.path;
  env = svc.environment // { PATH = lib.concatStringsSep ":" pathDirs; };
in
{
  unit = section (svc.unitConfig // {
    Description = svc.description;
    After = svc.after;
    Wants = svc.wants;
  });
  service = section svc.serviceConfig // {
    Environment = map (n: builtins.toJSON "${n}=${env.${n}}") (builtins.attrNames env);
  } // (if svc.restartIfChanged then { } else {
    # As nixpkgs' serviceToUnit writes it; switch-to-configuration reads it.
    "X-RestartIfChanged" = [ "false" ];
  });
  install = section { WantedBy = svc.wantedBy; };
  tmpfiles = out.systemd.tmpfiles.rules;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) out.assertions);
  inherit (svc) restartIfChanged;
  firewallPorts = out.networking.firewall.allowedTCPPorts or [ ];
  # What the Go side needs to render the same unit.
  stubs = {
    agent = lib.getExe self.packages.x86_64-linux.nio-agent;
    facter = lib.getExe pkgs.nixos-facter;
    path = pathDirs;
    nixPath = config.nix.nixPath;
  };
}
