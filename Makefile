# NIO — see README.md. Every tool is pinned in a go.mod and built locally; nothing is
# downloaded as a binary.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

ROOT    := $(CURDIR)
BIN     := $(ROOT)/bin
TOOLS   := $(BIN)/tools
K8S     := $(BIN)/k8s
GO      ?= go
# Packages of every module in go.work.
PKGS    := ./api/... ./agent/... ./operator/... ./testkit/...
# What `buf breaking` compares the proto against.
BUF_AGAINST ?= .git\#branch=main

export KUBEBUILDER_ASSETS := $(K8S)

.PHONY: build tools generate check-generate nix-check k8s systemd-host deps test unit e2e demo bench lint fmt vet buf-lint shellcheck buf-breaking clean

## build: the nio-operator, nio-agent and nio binaries, into bin/.
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(shell ls -d ./operator/cmd/nio-operator ./agent/cmd/nio-agent ./operator/cmd/nio 2>/dev/null)

## tools: buf, protoc-gen-go, protoc-gen-go-grpc and controller-gen from hack/tools/go.mod.
tools: $(TOOLS)/.stamp
$(TOOLS)/.stamp: hack/tools/go.mod hack/tools/go.sum
	cd hack/tools && GOWORK=off GOBIN=$(TOOLS) $(GO) install tool
	@touch $@

## generate: protobuf Go code, deepcopy, CRDs and RBAC. Reproducible: a clean tree stays clean.
generate: tools
	$(TOOLS)/buf generate
	cd api && $(TOOLS)/controller-gen object:headerFile=../hack/boilerplate.go.txt paths=./... \
		crd:crdVersions=v1 output:crd:artifacts:config=../operator/config/crd/bases
	@if [ -d operator/internal/controller ]; then \
		cd operator && $(TOOLS)/controller-gen rbac:roleName=nio-operator paths=./internal/controller/... \
			output:rbac:artifacts:config=config/rbac; fi

## check-generate: fails when the generated files were not what `make generate` makes.
GENERATED = { find api/gen api/v1alpha1/zz_generated.deepcopy.go operator/config/crd operator/config/rbac -type f 2>/dev/null || true; } | LC_ALL=C sort | xargs sha256sum
check-generate:
	@before=$$($(GENERATED)); $(MAKE) --no-print-directory generate >/dev/null; after=$$($(GENERATED)); \
	if [ "$$before" != "$$after" ]; then \
		diff <(echo "$$before") <(echo "$$after") >&2 || true; \
		echo "generated files were stale; make generate has rewritten them: review and commit" >&2; exit 1; fi

## k8s: kube-apiserver, etcd and kubectl built from the Go module proxy into bin/k8s.
k8s:
	hack/controlplane/build.sh $(K8S)

## systemd-host: the systemd test host's root file system (Debian trixie: systemd 257,
## Nix 2.26, OpenSSH) made with debootstrap into bin/systemd-host, once.
systemd-host: deps
	hack/systemd-host/build.sh $(BIN)/systemd-host

## deps: Debian packages the tests run for real (nix-bin, openssh-server, iproute2, git).
deps:
	hack/deps.sh

## test: lint, generated-code check, the Nix checks, every module's unit and envtest
## tests, and the end-to-end suite.
test: deps k8s lint check-generate nix-check unit e2e

## nix-check: the Nix side, offline, with the machine's Nix (2.8 suffices): vendor
## hashes current (recomputed from the Go module cache; nix/vendor-hash.sh --update
## rewrites them), nix/module.nix evaluated with a stub lib and compared setting by
## setting with testkit/agentunit's unit (assertions included), flake.nix's outputs
## evaluated with a stub nixpkgs, every .nix file parsed.
nix-check: deps
	nix/vendor-hash.sh --check
	$(GO) test -count=1 ./testkit/agentunit/ ./agent/internal/nixfiles/

unit:
	$(GO) test -count=1 -timeout 20m $(PKGS)

## e2e: the end-to-end suites of real processes (as root, about 4 minutes), one after
## the other: operator/test/e2e — the usage guide with kubectl, install.sh, the
## operator as its ServiceAccount, a demo host with sshd, nio-agent and Nix, and the
## demo with DEMO_EXIT=1; operator/test/systemdhost — the same control plane and
## operator against a host with real systemd as PID 1 and Nix 2.26 (bin/systemd-host
## under systemd-nspawn), nio-agent running as the NixOS module's unit.
e2e: deps k8s systemd-host
	$(GO) test -tags e2e -count=1 -p 1 -timeout 25m ./operator/test/e2e/ ./operator/test/systemdhost/

## demo: the usage guide for real on this machine (as root): control plane, install.sh,
## the operator as its ServiceAccount, one demo host; Ctrl-C cleans up. DEMO_EXIT=1
## exits after the walk-through, with status 0 only if every step held.
demo: deps k8s
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/nio-demo ./operator/test/demo
	$(BIN)/nio-demo

## bench: the fleet benchmark (10/100/1000 simulated machines: real control plane,
## operator, mTLS, git http-backend; standalone configurations, then one NixosFleet
## in batches of 10%) and NIO vs. a direct real-Nix apply. Prints the
## report; JSON and PNG into hack/bench/results/. More flags:
## make bench BENCH_FLAGS="-n 1000 -concurrency 50 -build-time 5s"
BENCH_FLAGS ?=
bench: deps k8s
	$(GO) run ./operator/test/bench -out hack/bench/results/bench.json $(BENCH_FLAGS)

## lint: gofmt, go vet, buf lint, shellcheck.
lint: fmt vet buf-lint shellcheck

fmt:
	@out=$$(gofmt -l api agent operator testkit hack); if [ -n "$$out" ]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi

vet:
	$(GO) vet -tags e2e $(PKGS)

buf-lint: tools
	$(TOOLS)/buf lint

SCRIPTS := install.sh .ci/run $(shell git ls-files 'hack/*.sh' 'hack/**/*.sh' 'nix/*.sh' 2>/dev/null)
shellcheck:
	shellcheck $(SCRIPTS)

## buf-breaking: the proto against $(BUF_AGAINST) (wired for after the first release).
buf-breaking: tools
	$(TOOLS)/buf breaking --against '$(BUF_AGAINST)'

clean:
	rm -rf $(BIN)
