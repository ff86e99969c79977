#!/usr/bin/env bash
# Installs the system packages the tests and the demo run for real: Nix (single-user,
# offline), OpenSSH's sshd, iproute2 (network namespaces) and git (git http-backend),
# debootstrap and systemd-nspawn (the systemd test host), plus shellcheck for
# `make lint`.
# Idempotent: installs only what is missing. Needs root (or passwordless sudo) when
# something is missing.
set -euo pipefail

need=()
command -v nix-build >/dev/null 2>&1 || need+=(nix-bin)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v git >/dev/null 2>&1 || need+=(git)
[ -x /usr/lib/git-core/git-http-backend ] || need+=(git)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# The systemd test host: a debootstrapped Debian root booted by systemd-nspawn.
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "hack/deps.sh: missing packages: ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

echo "hack/deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's openssh-server starts a system sshd on install; the tests run their own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  "${sudo[@]}" systemctl disable --now ssh >/dev/null 2>&1 || true
fi
