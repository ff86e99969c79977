# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-A8JF2wSFTW9XHur2eCySN9pCwObe8qGCJ5D82DxvPzg=";
  operator = "sha256-0JJeGNKPV9nd9gRZXd8zUcoIcuNHENd6Ew0eCqweP9M=";
}
