# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-PUzPobaNtLdO+Ll4N6+Hp54TPSoeVITipkJ1NO4At44=";
  operator = "sha256-yy7COt5mU/6RbT4V5FOe+FHjiYFrB8EAJX8hBV+qhms=";
}
