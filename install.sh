#!/usr/bin/env bash
# Installs NIO into the cluster of the current kubectl context.
#
#   ./install.sh              install or upgrade (idempotent)
#   ./install.sh --dry-run    print the manifests instead of applying them
#   ./install.sh --uninstall  remove what install.sh installed
#
# Environment: KUBECTL (kubectl to use, default: kubectl on PATH).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
kubectl=${KUBECTL:-kubectl}
mode=apply

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=dry-run ;;
    --uninstall) mode=uninstall ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

manifests=$here/operator/config/crd

if [ "$mode" = dry-run ]; then
  if command -v "$kubectl" >/dev/null 2>&1; then
    exec "$kubectl" kustomize "$manifests"
  fi
  for f in "$manifests"/bases/*.yaml; do echo "---"; cat "$f"; done
  exit 0
fi

if ! command -v "$kubectl" >/dev/null 2>&1; then
  echo "install.sh: kubectl not found; install it or set KUBECTL=/path/to/kubectl" >&2
  exit 1
fi
if ! "$kubectl" version --request-timeout=10s >/dev/null 2>&1; then
  echo "install.sh: no cluster reachable with the current kubectl context ($("$kubectl" config current-context 2>/dev/null || echo none)); check KUBECONFIG" >&2
  exit 1
fi

case "$mode" in
  apply)
    "$kubectl" apply --server-side --field-manager=nio-install -k "$manifests"
    "$kubectl" wait --for=condition=Established --timeout=60s \
      crd/machines.nio.homystack.com crd/nixosconfigurations.nio.homystack.com >/dev/null
    ;;
  uninstall)
    "$kubectl" delete --ignore-not-found -k "$manifests"
    ;;
esac
