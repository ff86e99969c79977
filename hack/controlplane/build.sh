#!/usr/bin/env bash
# Builds the test control plane into bin/k8s: kube-apiserver and kubectl from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, all from the Go module proxy.
# kube-apiserver and kubectl are the release matching k8s.io/api in operator/go.mod; a
# binary that already reports the wanted version is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/bin/k8s}
cd "$root/hack/controlplane"
export GOWORK=off CGO_ENABLED=0

modver() { # module version in a go.mod
  awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1"
}
api=$(modver "$root/operator/go.mod" k8s.io/api)
kube=$(modver go.mod k8s.io/kubernetes)
etcd=$(modver go.mod go.etcd.io/etcd/server/v3)
# k8s.io/api v0.X.Y is released with Kubernetes v1.X.Y.
if [ "v1.${api#v0.}" != "$kube" ]; then
  echo "hack/controlplane: k8s.io/kubernetes is $kube but operator/go.mod has k8s.io/api $api (want v1.${api#v0.});" >&2
  echo "  run: cd hack/controlplane && go get k8s.io/kubernetes@v1.${api#v0.} (and move the staging replaces to $api)" >&2
  exit 1
fi

major=${kube#v}; major=${major%%.*}
minor=${kube#v*.}; minor=${minor%%.*}
pkgs=(k8s.io/client-go/pkg/version k8s.io/component-base/version)
ldflags="-s -w"
for p in "${pkgs[@]}"; do
  ldflags+=" -X $p.gitVersion=$kube -X $p.gitMajor=$major -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

mkdir -p "$out"
build=()
"$out/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $kube" || build+=(k8s.io/kubernetes/cmd/kube-apiserver)
"$out/kubectl" version --client 2>/dev/null | grep -qx "Client Version: $kube" || build+=(k8s.io/kubernetes/cmd/kubectl)
"$out/etcd" --version 2>/dev/null | grep -qx "etcd Version: ${etcd#v}" || build+=(./etcd)
if [ ${#build[@]} -eq 0 ]; then
  exit 0
fi
echo "hack/controlplane: building ${build[*]} ($kube, etcd $etcd) into $out" >&2
go build -trimpath -ldflags "$ldflags" -o "$out/" "${build[@]}"
