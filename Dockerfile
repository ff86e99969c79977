# The nio-operator image: the operator, Nix and nixos-anywhere (fullInstall runs it).
#
#   docker build -t ghcr.io/homystack/nio-operator:v0.1.0 --build-arg VERSION=v0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t <ref> --push .
#
# Build from the repository root: the operator module replaces ../api and ../testkit.
#
# Pins, each an ARG to override:
#   GO_VERSION   the Go of go.mod's toolchain.
#   NIX_IMAGE    the official Nix image the runtime stage starts from (Nix, bash,
#                coreutils, openssh, git, CA certificates). Add @sha256:<digest> to pin
#                the exact bytes.
#   NIXPKGS_REV  the nixpkgs commit nixos-anywhere comes from: nixos-26.05 as of
#                August 2026, the revision nixos-anywhere's own flake.lock pinned as its
#                stable channel. A commit hash pins the whole closure.
ARG GO_VERSION=1.26.8
ARG NIX_IMAGE=nixos/nix:2.35.2

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY api/go.mod api/go.sum api/
COPY testkit/go.mod testkit/go.sum testkit/
COPY operator/go.mod operator/go.sum operator/
ENV GOWORK=off CGO_ENABLED=0 GOFLAGS=-trimpath
RUN cd operator && go mod download
COPY api/ api/
COPY testkit/ testkit/
COPY operator/ operator/
ARG VERSION=dev
# Set by buildx for each --platform; empty (the build host's) with the classic builder.
ARG TARGETOS
ARG TARGETARCH
RUN cd operator && GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -ldflags "-s -w -X main.version=${VERSION}" -o /out/nio-operator ./cmd/nio-operator

FROM ${NIX_IMAGE}
ARG NIXPKGS_REV=5880666fd9eb563038431edb35c2d0aa595884e6
# - nixos-anywhere goes into a profile of its own, next to the image's default one.
# - Nix's settings: the runtime user is not root and has no build users; container
#   runtimes forbid the user namespaces the sandbox needs.
# - The user nio (65532, as the Deployment's runAsUser) needs a passwd entry: ssh
#   refuses to run for a uid it cannot look up. /etc/passwd and /etc/group may be
#   links into the store, so they are replaced by copies first.
# - /nix is handed to nio: Nix is single-user here, and nixos-anywhere evaluates and
#   builds the host's system into the local store. (In Kubernetes the Deployment runs
#   on a writable copy of it; see operator/config/manager/deployment.yaml.) The chown
#   rewrites the base image's /nix into this layer, a few hundred MB more than the base.
RUN set -eux; \
    nix --extra-experimental-features 'nix-command flakes' profile install \
      --profile /nix/var/nix/profiles/nio "github:NixOS/nixpkgs/${NIXPKGS_REV}#nixos-anywhere"; \
    mkdir -p /etc/nio; \
    printf '%s\n' \
      'experimental-features = nix-command flakes' \
      'build-users-group =' \
      'sandbox = false' \
      'max-jobs = auto' \
      > /etc/nio/nix.conf; \
    for f in /etc/passwd /etc/group; do \
      if [ -L "$f" ]; then cp --remove-destination "$(readlink -f "$f")" "$f"; fi; \
    done; \
    echo 'nio:x:65532:65532:NIO operator:/home/nio:/bin/sh' >> /etc/passwd; \
    echo 'nio:x:65532:' >> /etc/group; \
    mkdir -p /home/nio; \
    chown -R 65532:65532 /nix /home/nio
COPY --from=build /out/nio-operator /usr/local/bin/nio-operator
ENV PATH=/nix/var/nix/profiles/nio/bin:/nix/var/nix/profiles/default/bin:/nix/var/nix/profiles/default/sbin \
    NIX_CONF_DIR=/etc/nio \
    HOME=/home/nio \
    USER=nio
USER 65532:65532
WORKDIR /home/nio
ENTRYPOINT ["/usr/local/bin/nio-operator"]
