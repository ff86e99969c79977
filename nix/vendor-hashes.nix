# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-WYYkhoWzCubyzC4Ih+7WtLOxV82FfE/ilkAdEDzft0o=";
  operator = "sha256-HI/3xBl18AA9UGK3OH2cu03PNykYYVWlc/qYLfiggsI=";
}
