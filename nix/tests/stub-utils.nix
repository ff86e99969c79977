# nixpkgs' nixos/lib/utils.nix escapeSystemdExecArgs, reimplemented for the offline
# evaluation: each argument JSON-quoted (systemd unquotes "…" with C escapes, a
# superset of JSON's), then % → %% (no specifier expansion) and $ → $$ (no
# environment substitution). testkit/agentunit implements the same rule in Go, and
# its tests check it against this file with the real builtins.toJSON.
{ lib }:
let
  escapeSystemdExecArg = arg:
    builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
in
{
  inherit escapeSystemdExecArg;
  escapeSystemdExecArgs = args: lib.concatStringsSep " " (map escapeSystemdExecArg args);
}
