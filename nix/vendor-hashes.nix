# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-a0LE8NjF97cagAXlUyzpfd4kh/aiPknBVtdVcLGHC0A=";
  operator = "sha256-lviirL5TAt3/HOXDIxwEg5df4qbWRXgqZGbaTbT4o60=";
}
