#!/usr/bin/env bash
# The buildGoModule vendorHash of the Go modules that flake.nix builds: the NAR hash
# of what `go mod vendor` produces for a module outside the workspace, which is what
# buildGoModule's vendor derivation hashes. The replaced sibling modules (api,
# testkit) are vendored too, so a Go change there changes the hash, not only
# go.mod/go.sum.
#
#   nix/vendor-hash.sh agent|operator   print one module's hash
#   nix/vendor-hash.sh --check          compare both with nix/vendor-hashes.nix (make nix-check)
#   nix/vendor-hash.sh --update         rewrite nix/vendor-hashes.nix
#
# The source vendored is what a git+file or github flake reference sees: the files
# git tracks, with their working-tree content. Modules come from the Go module cache
# (the proxy only for what it lacks).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
hashes_file=$root/nix/vendor-hashes.nix
modules=(agent operator)
go_dirs=(api agent operator testkit)

tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

# The source tree, once: the Go modules' tracked files, as the flake's source.
source_tree() {
  local src=$tmp/src
  if [[ ! -d $src ]]; then
    mkdir -p "$src"
    if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      # --ignore-failed-read: a tracked file deleted in the work tree is not in the
      # flake's source either.
      git -C "$root" ls-files -z -- "${go_dirs[@]}" |
        tar -C "$root" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$src" -xf -
    else
      for d in "${go_dirs[@]}"; do cp -a "$root/$d" "$src/"; done
    fi
  fi
  printf '%s\n' "$src"
}

# What nixpkgs' vendor derivation runs: no workspace, no GOFLAGS of ours (it sets
# none; -mod=mod would let go rewrite go.mod where the build would fail), the
# toolchain at hand (GOTOOLCHAIN=local).
hash_of() {
  local module=$1 src out
  src=$(source_tree)
  out=$tmp/vendor-$module
  (cd "$src/$module" && GOWORK=off GOFLAGS='' GOTOOLCHAIN=local GO111MODULE=on go mod vendor -o "$out")
  nix --extra-experimental-features nix-command hash path "$out"
}

recorded() {
  nix --extra-experimental-features nix-command eval --raw --file "$hashes_file" "$1"
}

write_hashes() {
  local agent=$1 operator=$2
  cat >"$hashes_file" <<NIX
# vendorHash of each Go module: the NAR hash of its \`go mod vendor\` tree, replaced
# sibling modules (api, testkit) included. Written by \`nix/vendor-hash.sh --update\`;
# \`make nix-check\` fails when it is stale. A stale hash also fails \`nix build\` with
# "hash mismatch … got: sha256-…".
{
  agent = "$agent";
  operator = "$operator";
}
NIX
}

case ${1:-} in
agent | operator)
  hash_of "$1"
  ;;
--check | --update)
  declare -A now
  stale=0
  for m in "${modules[@]}"; do
    now[$m]=$(hash_of "$m")
    was=$(recorded "$m")
    if [[ ${now[$m]} != "$was" ]]; then
      stale=1
      printf '%s: nix/vendor-hashes.nix has %s, the vendor tree hashes to %s\n' "$m" "$was" "${now[$m]}" >&2
    fi
  done
  if [[ $1 == --update ]]; then
    write_hashes "${now[agent]}" "${now[operator]}"
    printf 'nix/vendor-hashes.nix: agent = %s, operator = %s\n' "${now[agent]}" "${now[operator]}"
  elif ((stale)); then
    echo "vendor hashes are stale: run nix/vendor-hash.sh --update and commit nix/vendor-hashes.nix" >&2
    exit 1
  else
    echo "vendor hashes are current"
  fi
  ;;
*)
  echo "usage: nix/vendor-hash.sh agent|operator|--check|--update" >&2
  exit 2
  ;;
esac
