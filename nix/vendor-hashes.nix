# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-cS5Jk6uDtloSfRqcdCGQpyNuc/B2aMXLu6N5GZFROzo=";
  operator = "sha256-+MQVZT2vuqy2C1TAbsIIP5VqKwut/9EJByoQxKT/pks=";
}
