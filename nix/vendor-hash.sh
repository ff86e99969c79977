#!/usr/bin/env bash
# Prints the buildGoModule vendorHash of one Go module of this repository (agent or
# operator): the NAR hash of what `go mod vendor` produces for it outside the
# workspace, which is what buildGoModule's vendor derivation hashes.
set -euo pipefail
module=${1:?usage: nix/vendor-hash.sh agent|operator}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$root/$module" && GOWORK=off GOFLAGS=-mod=mod go mod vendor -o "$out/vendor")
nix --extra-experimental-features nix-command hash path "$out/vendor"
