# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-fBF8goad82V8U8IPCTjE690oqEDkAvqYzcN9BFkD0kI=";
  operator = "sha256-moKea0KGm2GDdMza/MxLtr8ZOkzO0n/fUcrMa4/+wMY=";
}
