# The part of nixpkgs' lib that module.nix uses, written on builtins, so `make test`
# can evaluate the module offline with any Nix (2.8 included) and no nixpkgs. Only
# what the module needs, with nixpkgs' meaning; the module system itself is not
# modelled: eval-module.nix calls the module as a function and reads `default`s.
let
  inherit (builtins) concatStringsSep filter head isAttrs length stringLength substring;

  hasPrefix = pref: s: substring 0 (stringLength pref) s == pref;
  # Option types only name themselves here: eval-module.nix feeds values that the
  # real types accept, and the module's own assertions are what is tested.
  type = name: { _type = "stub-type"; inherit name; };
in
rec {
  inherit concatStringsSep hasPrefix;

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption { default = false; description = "Whether to enable ${name}."; };
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  mkIf = condition: content: { _type = "if"; inherit condition content; };

  types = {
    str = type "str";
    bool = type "bool";
    port = type "port";
    path = type "path";
    package = type "package";
    enum = values: type "enum" // { inherit values; };
    listOf = elem: type "listOf" // { inherit elem; };
  };

  removePrefix = pref: s:
    if hasPrefix pref s then substring (stringLength pref) (stringLength s) s else s;
  hasInfix = infix: s: builtins.match ".*${escapeRegex infix}.*" s != null;
  escapeRegex = builtins.replaceStrings
    [ "\\" "[" "]" "(" ")" "{" "}" "." "*" "+" "?" "^" "$" "|" ]
    [ "\\\\" "\\[" "\\]" "\\(" "\\)" "\\{" "\\}" "\\." "\\*" "\\+" "\\?" "\\^" "\\$" "\\|" ];

  optionalAttrs = cond: attrs: if cond then attrs else { };

  # First occurrence kept, order kept: nixpkgs' lib.unique.
  unique = builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];

  getExe = pkg: "${pkg}/bin/${pkg.meta.mainProgram}";

  # Unused by the module but handy to eval-module.nix.
  inherit filter head isAttrs length;
}
