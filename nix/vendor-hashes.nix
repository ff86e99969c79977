# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-Wym9ZBfr+LR3Ld9QlS23fTcDwAtZI4YdIZbmPxwEuhQ=";
  operator = "sha256-NYY/WRyMnrfG/jQYQz4KdZhGETP/xWQEpPbJVpzG7gw=";
}
