#!/usr/bin/env bash
# Installs NIO into the cluster of the current kubectl context: the CRDs, the
# nixos-operator-system namespace, the nio-operator ServiceAccount, its RBAC and the
# operator Deployment. The manifests are operator/config/ (kustomize); see --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./install.sh [options]

Installs or upgrades NIO in the cluster of the current kubectl context. Idempotent:
a second run with the same options changes nothing.

  --image REF         operator image (default: $NIO_IMAGE, else
                      ghcr.io/homystack/nio-operator:latest); REF is
                      [registry[:port]/]path[:tag][@sha256:digest]
  --webhook           also run the push webhook receiver: Service
                      nio-operator-webhook, port 9292, POST /hook/<provider>; creates
                      the Secret nio-webhook (key token) with a random token if
                      missing. Without it, a receiver installed before is removed
  --watch-namespaces NS[,NS...]
                      manage Machines and NixosConfigurations in these namespaces only
                      (they must exist): the operator's ClusterRole is bound there by
                      RoleBindings instead of cluster-wide, so it reads Secrets only
                      there, and the operator runs with --watch-namespaces. Without
                      it, a scoping installed before is removed (cluster-wide again)
  --no-deployment     install everything but the operator's Deployment and Services
                      (removing them if installed before), to run nio-operator outside
                      the cluster as the ServiceAccount nio-operator
  --dry-run           print the manifests and change nothing (no cluster needed)
  --uninstall         remove what install.sh installs: the operator first, then its
                      namespace and RBAC, the CRDs last. Deleting the CRDs deletes every
                      Machine, NixosConfiguration and NixosFleet; if any exist,
                      --uninstall refuses unless --yes or --keep-crds is given
  --yes               with --uninstall: delete existing Machines, NixosConfigurations
                      and NixosFleets along with the CRDs. Hosts keep the system
                      they run; onRemoveFlake is not applied (delete the
                      NixosFleets and NixosConfigurations first, with the operator
                      running, for that)
  --keep-crds         with --uninstall: keep the CRDs and every Machine,
                      NixosConfiguration and NixosFleet
  --kubeconfig PATH   kubeconfig to use (default: kubectl's, $KUBECONFIG or ~/.kube/config)
  --context NAME      kubeconfig context to use (default: the current one)
  -h, --help          this text

Environment: KUBECTL (the kubectl to run, default: kubectl on PATH), NIO_IMAGE.
EOF
}

die() {
  echo "install.sh: $*" >&2
  exit 1
}

usage_error() {
  echo "install.sh: $*" >&2
  echo "Run ./install.sh --help for the options." >&2
  exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
config=$here/operator/config
namespace=nixos-operator-system
field_manager=nio-install
default_image=ghcr.io/homystack/nio-operator:latest
crds=(crd/machines.nio.homystack.com crd/nixosconfigurations.nio.homystack.com crd/nixosfleets.nio.homystack.com)

kubectl=${KUBECTL:-kubectl}
image=${NIO_IMAGE:-}
mode=apply
webhook=false
deployment=true
watch_namespaces=
yes=false
keep_crds=false
kubectl_args=()
context=''

set_mode() {
  if [ "$mode" != apply ] && [ "$mode" != "$1" ]; then
    usage_error "--$mode and --$1 exclude each other"
  fi
  mode=$1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --image)
      if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "--image needs a value"; fi
      image=$2
      shift
      ;;
    --image=*)
      image=${1#--image=}
      [ -n "$image" ] || usage_error "--image needs a value"
      ;;
    --webhook) webhook=true ;;
    --watch-namespaces)
      if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "--watch-namespaces needs a value"; fi
      watch_namespaces=$2
      shift
      ;;
    --watch-namespaces=*)
      watch_namespaces=${1#--watch-namespaces=}
      [ -n "$watch_namespaces" ] || usage_error "--watch-namespaces needs a value"
      ;;
    --no-deployment) deployment=false ;;
    --dry-run) set_mode dry-run ;;
    --uninstall) set_mode uninstall ;;
    --yes) yes=true ;;
    --keep-crds) keep_crds=true ;;
    --kubeconfig)
      [ $# -ge 2 ] || usage_error "--kubeconfig needs a value"
      kubectl_args+=(--kubeconfig "$2")
      shift
      ;;
    --kubeconfig=*) kubectl_args+=(--kubeconfig "${1#--kubeconfig=}") ;;
    --context)
      [ $# -ge 2 ] || usage_error "--context needs a value"
      context=$2
      kubectl_args+=(--context "$2")
      shift
      ;;
    --context=*)
      context=${1#--context=}
      kubectl_args+=(--context "$context")
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

if [ "$mode" != uninstall ] && { [ "$yes" = true ] || [ "$keep_crds" = true ]; }; then
  usage_error "--yes and --keep-crds go with --uninstall"
fi
# The namespaces go into manifests: each must be a namespace name, nothing else.
watch_list=()
if [ -n "$watch_namespaces" ]; then
  IFS=, read -r -a watch_list <<<"$watch_namespaces"
  for ns in "${watch_list[@]}"; do
    if ! [[ $ns =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
      usage_error "--watch-namespaces: '$ns' is not a namespace name"
    fi
  done
fi
if [ "$webhook" = true ] && [ "$deployment" = false ]; then
  usage_error "--webhook needs the Deployment: the receiver runs in the operator (out of the cluster, pass --webhook-bind-address to nio-operator yourself)"
fi

# k runs kubectl with the --kubeconfig/--context given to install.sh. (The
# ${a[@]+...} form keeps an empty array from tripping `set -u` in bash < 4.4.)
k() {
  "$kubectl" ${kubectl_args[@]+"${kubectl_args[@]}"} "$@"
}

# parse_image splits an image reference into image_name, image_tag and image_digest,
# and refuses anything that is not one: the parts are written into a kustomization, so
# only the characters of the reference grammar may pass.
parse_image() {
  local ref=$1 rest
  image_name='' image_tag='' image_digest=''
  [ ${#ref} -le 512 ] || die "--image: reference too long"
  rest=$ref
  case "$rest" in
    *@*)
      image_digest=${rest#*@}
      rest=${rest%%@*}
      ;;
  esac
  # A tag follows the last ':' only when no '/' comes after it (else it is a port).
  case "$rest" in
    *:*)
      if [[ "${rest##*:}" != */* ]]; then
        image_tag=${rest##*:}
        rest=${rest%:*}
      fi
      ;;
  esac
  image_name=$rest
  # As docker reads a name: the first component is a registry only if it has a '.' or
  # a ':' or is localhost; the path is lower case.
  local host_re='^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:[0-9]{1,5})?$'
  local component='[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*'
  local path_re="^${component}(/${component})*$"
  local host='' path=$image_name
  case "$image_name" in
    */*)
      host=${image_name%%/*}
      case "$host" in
        *.* | *:* | localhost) path=${image_name#*/} ;;
        *) host='' ;;
      esac
      ;;
  esac
  if { [ -n "$host" ] && ! [[ $host =~ $host_re ]]; } || ! [[ $path =~ $path_re ]] || [ ${#image_name} -gt 255 ]; then
    die "--image: '$ref' is not an image reference ([registry[:port]/]path[:tag][@sha256:digest], lower-case path)"
  fi
  local tag_re='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'
  local digest_re='^sha256:[a-f0-9]{64}$'
  if [ -n "$image_tag" ] && ! [[ $image_tag =~ $tag_re ]]; then
    die "--image: bad tag '$image_tag' in '$ref'"
  fi
  if [ -n "$image_digest" ] && ! [[ $image_digest =~ $digest_re ]]; then
    die "--image: bad digest '$image_digest' in '$ref' (want sha256:<64 hex digits>)"
  fi
}

if ! command -v "$kubectl" >/dev/null 2>&1; then
  die "kubectl not found ('$kubectl'): install kubectl (https://kubernetes.io/docs/tasks/tools/) or set KUBECTL=/path/to/kubectl"
fi
if [ -n "$image" ]; then
  parse_image "$image"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nio-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# render writes the manifests to install into $tmp/manifests.yaml: a kustomize
# overlay of operator/config/default with the options applied. kustomize wants
# relative paths, hence the link to operator/config.
render() {
  local dir=$tmp/overlay
  mkdir -p "$dir"
  ln -s "$config" "$dir/config"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "  - config/default"
    if [ "$webhook" = true ]; then
      echo "components:"
      echo "  - config/webhook"
    fi
    if [ -n "$image" ]; then
      echo "images:"
      echo "  - name: ${default_image%:*}"
      echo "    newName: '$image_name'"
      if [ -n "$image_tag" ]; then echo "    newTag: '$image_tag'"; fi
      if [ -n "$image_digest" ]; then echo "    digest: '$image_digest'"; fi
    fi
    if [ ${#watch_list[@]} -gt 0 ]; then
      echo "  - watch-bindings.yaml"
    fi
    if [ "$deployment" = false ] || [ ${#watch_list[@]} -gt 0 ]; then
      echo "patches:"
    fi
    if [ "$deployment" = false ]; then
      local kind name kind_name
      for kind_name in Deployment/nio-operator Service/nio-operator-metrics Service/nio-operator-logs; do
        kind=${kind_name%/*} name=${kind_name#*/}
        echo "  - patch: |-"
        echo "      \$patch: delete"
        if [ "$kind" = Deployment ]; then echo "      apiVersion: apps/v1"; else echo "      apiVersion: v1"; fi
        echo "      kind: $kind"
        echo "      metadata:"
        echo "        name: $name"
        echo "        namespace: $namespace"
      done
    fi
    if [ ${#watch_list[@]} -gt 0 ]; then
      echo "  - patch: |-"
      echo "      \$patch: delete"
      echo "      apiVersion: rbac.authorization.k8s.io/v1"
      echo "      kind: ClusterRoleBinding"
      echo "      metadata:"
      echo "        name: nio-operator"
      if [ "$deployment" = true ]; then
        echo "  - target: {kind: Deployment, name: nio-operator}"
        echo "    patch: |-"
        echo "      - op: add"
        echo "        path: /spec/template/spec/containers/0/args/-"
        echo "        value: --watch-namespaces=$watch_namespaces"
      fi
    fi
  } >"$dir/kustomization.yaml"
  if [ ${#watch_list[@]} -gt 0 ]; then
    for ns in "${watch_list[@]}"; do
      cat <<EOB
---
# Binds the operator's ClusterRole in a namespace it manages (--watch-namespaces).
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: nio-operator-watch
  namespace: $ns
  labels:
    app.kubernetes.io/component: watch-binding
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: nio-operator
subjects:
  - kind: ServiceAccount
    name: nio-operator
    namespace: $namespace
EOB
    done >"$dir/watch-bindings.yaml"
  fi
  "$kubectl" kustomize "$dir" >"$tmp/manifests.yaml" ||
    die "kubectl kustomize $config failed (kubectl 1.27 or newer is needed)"
}

# check_cluster fails with kubectl's own error when the API server cannot be reached.
check_cluster() {
  local err
  if ! err=$(k version --request-timeout=10s 2>&1 >/dev/null); then
    local ctx=$context
    if [ -z "$ctx" ]; then
      ctx=$(k config current-context 2>/dev/null || echo none)
    fi
    die "no cluster reachable with kubectl context '$ctx' (check KUBECONFIG, --kubeconfig, --context): $(echo "$err" | tail -n 1)"
  fi
}

# ensure_webhook_secret creates the webhook's shared secret when it is missing, and
# never changes an existing one. The token goes through stdin, never argv.
ensure_webhook_secret() {
  local found token
  found=$(k get secret nio-webhook -n "$namespace" --ignore-not-found -o name)
  if [ -n "$found" ]; then
    echo "secret/nio-webhook exists: kept"
    return
  fi
  token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  [ ${#token} -eq 64 ] || die "could not read 32 random bytes from /dev/urandom"
  k create --field-manager="$field_manager" -f - <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: nio-webhook
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: nio
type: Opaque
stringData:
  token: $token
EOF
  echo "The webhook token (give it to your forge as the webhook secret):"
  echo "  kubectl -n $namespace get secret nio-webhook -o jsonpath='{.data.token}' | base64 -d"
}

# prune removes what an earlier run with other options installed and this one does
# not: server-side apply only adds and updates. (--no-deployment after a full install
# must not leave a second operator running in the cluster.)
prune() {
  local stale=()
  if [ "$webhook" = false ]; then
    stale+=(service/nio-operator-webhook)
  fi
  if [ "$deployment" = false ]; then
    stale+=(deployment/nio-operator service/nio-operator-metrics service/nio-operator-logs)
  fi
  if [ ${#stale[@]} -gt 0 ]; then
    k delete -n "$namespace" --ignore-not-found "${stale[@]}"
  fi
  # Namespace scoping: the cluster-wide binding or the per-namespace ones, never both,
  # and no binding left in a namespace no longer managed.
  if [ ${#watch_list[@]} -gt 0 ]; then
    k delete --ignore-not-found clusterrolebinding/nio-operator
  fi
  local bound wanted
  bound=$(k get rolebinding -A -l app.kubernetes.io/component=watch-binding -o jsonpath='{range .items[*]}{.metadata.namespace}{"\n"}{end}')
  for ns in $bound; do
    wanted=false
    for w in ${watch_list[@]+"${watch_list[@]}"}; do
      if [ "$w" = "$ns" ]; then wanted=true; fi
    done
    if [ "$wanted" = false ]; then
      k delete -n "$ns" --ignore-not-found rolebinding/nio-operator-watch
    fi
  done
}

install_nio() {
  k apply --server-side --force-conflicts --field-manager="$field_manager" -f "$tmp/manifests.yaml"
  prune
  k wait --for=condition=Established --timeout=60s "${crds[@]}" >/dev/null
  if [ "$webhook" = true ]; then
    ensure_webhook_secret
  fi
  if [ "$deployment" = true ]; then
    echo "NIO is installed. Watch the operator start with:"
    echo "  kubectl -n $namespace rollout status deployment/nio-operator"
  else
    echo "NIO is installed without the operator's Deployment. Run nio-operator with the"
    echo "ServiceAccount's identity, e.g. a token from:"
    echo "  kubectl -n $namespace create token nio-operator"
  fi
}

# count_objects prints how many objects of a resource exist in all namespaces.
count_objects() {
  k get "$1" --all-namespaces -o name | wc -l | tr -d ' '
}

# release_configurations drops NIO's finalizer from every NixosConfiguration. Run only
# once the operator is gone: nobody would ever remove it, and the CRD would never go.
release_configurations() {
  local template ns name index
  # shellcheck disable=SC2016 # a Go template, not shell
  template='{{range .items}}{{$o := .}}{{range $i, $f := .metadata.finalizers}}{{if eq $f "nio.homystack.com/finalizer"}}{{$o.metadata.namespace}} {{$o.metadata.name}} {{$i}}{{"\n"}}{{end}}{{end}}{{end}}'
  k get nixosconfigurations.nio.homystack.com --all-namespaces -o go-template="$template" >"$tmp/finalizers"
  while read -r ns name index; do
    [ -n "$name" ] || continue
    k patch nixosconfigurations.nio.homystack.com "$name" -n "$ns" --type=json \
      -p "[{\"op\":\"test\",\"path\":\"/metadata/finalizers/$index\",\"value\":\"nio.homystack.com/finalizer\"},{\"op\":\"remove\",\"path\":\"/metadata/finalizers/$index\"}]" >/dev/null
    echo "nixosconfiguration $ns/$name: finalizer released"
  done <"$tmp/finalizers"
}

uninstall_nio() {
  local have_crds=false machines=0 configurations=0 fleets=0
  if [ -n "$(k get "${crds[@]}" --ignore-not-found -o name)" ]; then
    have_crds=true
  fi
  if [ "$have_crds" = true ] && [ "$keep_crds" = false ]; then
    if [ -n "$(k get "${crds[0]}" --ignore-not-found -o name)" ]; then
      machines=$(count_objects machines.nio.homystack.com)
    fi
    if [ -n "$(k get "${crds[1]}" --ignore-not-found -o name)" ]; then
      configurations=$(count_objects nixosconfigurations.nio.homystack.com)
    fi
    if [ -n "$(k get "${crds[2]}" --ignore-not-found -o name)" ]; then
      fleets=$(count_objects nixosfleets.nio.homystack.com)
    fi
    if [ $((machines + configurations + fleets)) -gt 0 ] && [ "$yes" = false ]; then
      die "$machines Machine(s), $configurations NixosConfiguration(s) and $fleets NixosFleet(s) exist; deleting the CRDs deletes them all (hosts keep the system they run, onRemoveFlake is not applied). Re-run with --yes to delete them, or --keep-crds to keep the CRDs and your objects. Nothing was removed."
    fi
  fi

  # The operator goes first and is waited for, so it cannot act on the objects the
  # CRD deletion removes (it would apply their onRemoveFlake).
  k delete -f "$tmp/manifests.yaml" -l app=nixos-operator --ignore-not-found
  k wait --for=delete pod -l app=nixos-operator -n "$namespace" --timeout=120s

  # The namespace's contents (the CA Secret, the lease) go with it, in the background.
  k delete -f "$tmp/manifests.yaml" -l 'app.kubernetes.io/component!=crd' --ignore-not-found --wait=false
  k delete rolebinding -A -l app.kubernetes.io/component=watch-binding --ignore-not-found

  if [ "$keep_crds" = true ]; then
    echo "NIO is uninstalled; the CRDs, Machines, NixosConfigurations and NixosFleets are kept."
  elif [ "$have_crds" = true ]; then
    k delete -f "$tmp/manifests.yaml" -l app.kubernetes.io/component=crd --ignore-not-found --wait=false
    if [ -n "$(k get "${crds[1]}" --ignore-not-found -o name)" ]; then
      release_configurations
    fi
    k wait --for=delete "${crds[@]}" --timeout=120s >/dev/null 2>&1 ||
      die "the CRDs are still being deleted after 2 minutes: is an operator still running outside the cluster? See kubectl get ${crds[*]} -o yaml"
    echo "NIO is uninstalled."
  else
    echo "NIO is uninstalled."
  fi
}

case "$mode" in
  dry-run)
    render
    cat "$tmp/manifests.yaml"
    ;;
  apply)
    render
    check_cluster
    install_nio
    ;;
  uninstall)
    # Everything install.sh may have installed, whatever options it was run with.
    webhook=true deployment=true image='' watch_list=()
    render
    check_cluster
    uninstall_nio
    ;;
esac
