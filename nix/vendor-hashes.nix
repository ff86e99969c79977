# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree, replaced
# sibling modules (api, testkit) included. Written by `nix/vendor-hash.sh --update`;
# `make nix-check` fails when it is stale. A stale hash also fails `nix build` with
# "hash mismatch … got: sha256-…".
{
  agent = "sha256-Jax95GOHOLr0juIfM0Qip+rgd5sZTswk+ruxDoB6VKI=";
  operator = "sha256-5KDnJNc932w9rPTASPxWq6P5VuaRFWZc9m6vLWkc9j4=";
}
