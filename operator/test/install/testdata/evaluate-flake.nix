# Evaluates examples/flake without nixpkgs (there is none offline): the flake's outputs
# with stand-ins for its inputs (nixosSystem returns its arguments), and each system's
# modules called directly, their imports followed. Prints, per system, the values the
# modules set for the options the test checks (a list: one entry per module setting it),
# and the options nix/module.nix declares under services.nio-agent.
{ flakeDir, repoRoot }:
let
  dir = /. + flakeDir;
  # Option names only: attrNames forces none of the values, so a bare lib will do.
  stubLib = { mkOption = x: x; mkEnableOption = x: x; mkIf = c: v: v; types = { }; literalExpression = x: x; };
  agentModule = import (/. + repoRoot + "/nix/module.nix") { self = { }; };
  flake = import (dir + "/flake.nix");
  outputs = flake.outputs {
    self = outputs;
    nixpkgs.lib.nixosSystem = args: args;
    nio.nixosModules.nio-agent = { nioAgentModule = true; };
  };
  # lib.mkForce as nixpkgs' lib makes it: an override the report can recognise.
  moduleArgs = { config = { }; lib.mkForce = content: { _type = "override"; priority = 50; inherit content; }; pkgs = { }; options = { }; };
  load = m: if builtins.isFunction m then m moduleArgs else m;
  # A module and the modules it imports, each as the attribute set it evaluates to.
  flatten = m:
    let value = load (if builtins.isPath m || builtins.isString m then import m else m);
    in [ (builtins.removeAttrs value [ "imports" ]) ] ++ builtins.concatMap flatten (value.imports or [ ]);
  get = path: v:
    if path == [ ] then [ v ]
    else if builtins.isAttrs v && builtins.hasAttr (builtins.head path) v
    then get (builtins.tail path) (builtins.getAttr (builtins.head path) v)
    else [ ];
  report = modules:
    let values = path: builtins.concatMap (get path) modules;
    in {
      agentModule = values [ "nioAgentModule" ];
      agent = values [ "services" "nio-agent" ];
      openssh = values [ "services" "openssh" "enable" ];
      rootKeys = values [ "users" "users" "root" "openssh" "authorizedKeys" "keys" ];
      platform = values [ "nixpkgs" "hostPlatform" ];
      rootFileSystem = values [ "fileSystems" "/" "device" ];
      nixFeatures = values [ "nix" "settings" "experimental-features" ];
      stateVersion = values [ "system" "stateVersion" ];
      postgresql = values [ "services" "postgresql" "enable" ];
      hostName = values [ "networking" "hostName" ];
      nginx = values [ "services" "nginx" "enable" ];
      nginxHosts = values [ "services" "nginx" "virtualHosts" ];
    };
  reportSystem = s: report (builtins.concatMap flatten s.modules);
in
{
  worker = reportSystem outputs.nixosConfigurations.worker;
  minimal = reportSystem outputs.nixosConfigurations.minimal;
  # Every system by its name, for the ones a NixosFleet's ".#{hostname}" names.
  systems = builtins.mapAttrs (_: reportSystem) outputs.nixosConfigurations;
  # onRemoveFlake: "hosts/minimal.nix" evaluates the file alone, outside the flake.
  minimalFile = report (flatten (dir + "/hosts/minimal.nix"));
  agentOptions = builtins.attrNames (agentModule { config = { }; lib = stubLib; pkgs = { }; utils = { }; }).options.services.nio-agent;
}
