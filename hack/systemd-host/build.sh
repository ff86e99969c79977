#!/usr/bin/env bash
# Builds the root file system of the systemd test host into bin/systemd-host/root: a
# Debian trixie (systemd 257, Nix 2.26 from Debian's nix-bin, OpenSSH, git) made with
# debootstrap from Debian's mirror, booted by the tests under systemd-nspawn with real
# systemd as PID 1 (operator/test/harness/systemdhost.go). Everything a test run
# changes goes to an overlay above this root, so the root is built once and kept; it is
# rebuilt when this script changes (bin/systemd-host/stamp holds the script's hash).
#
# What is NIO's (the agent, its unit, keys, the fixture's boot emulation) is written by
# the harness per run, not here: this root is only the distribution.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/bin/systemd-host}
suite=trixie
mirror=${NIO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
want=$(sha256sum "$0" | cut -d' ' -f1)

if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$want" ] && [ -x "$out/root/usr/bin/nix" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "hack/systemd-host: building the test host's root needs root (debootstrap, systemd-nspawn)" >&2
  exit 1
fi
for tool in debootstrap systemd-nspawn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "hack/systemd-host: $tool is missing: run hack/deps.sh (packages debootstrap, systemd-container)" >&2
    exit 1
  fi
done

echo "hack/systemd-host: building a Debian $suite root into $out/root (a few minutes, once)" >&2
mkdir -p "$out"
tmp="$out/root.new"
rm -rf "$tmp" "$out/root"
# nix-bin is installed in a second step: debootstrap's resolver does not follow
# virtual packages (libdbd-sqlite3-perl needs perl-dbdabi-94), apt's does.
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,openssh-server,git,iproute2,ca-certificates,procps \
  "$suite" "$tmp" "$mirror" >"$out/debootstrap.log" 2>&1 || {
  tail -n 30 "$out/debootstrap.log" >&2
  exit 1
}
in_root() {
  systemd-nspawn --quiet --register=no --keep-unit --directory="$tmp" \
    --setenv=DEBIAN_FRONTEND=noninteractive "$@"
}
in_root apt-get install -y -qq --no-install-recommends nix-bin nix-setup-systemd >>"$out/debootstrap.log" 2>&1 || {
  tail -n 30 "$out/debootstrap.log" >&2
  exit 1
}

# Nix offline, as in every test of this repository: no substituters, no flake registry
# download. The sandbox is off because builds run inside a container already.
mkdir -p "$tmp/etc/nix"
printf '{"flakes":[],"version":2}\n' >"$tmp/etc/nix/registry.json"
cat >"$tmp/etc/nix/nix.conf" <<'EOF'
experimental-features = nix-command flakes
sandbox = false
substituters =
flake-registry = /etc/nix/registry.json
build-users-group = nixbld
EOF

# sshd: keys only. The host key and root's authorized key are written per run.
rm -f "$tmp"/etc/ssh/ssh_host_*
cat >"$tmp/etc/ssh/sshd_config.d/10-nio-test.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
EOF

# No console logins (the container has no terminal) and a fresh machine id per run.
in_root systemctl mask console-getty.service getty@tty1.service >/dev/null 2>&1
: >"$tmp/etc/machine-id"
echo nio-systemd-host >"$tmp/etc/hostname"

in_root apt-get clean >/dev/null 2>&1
rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp/debootstrap"

mv "$tmp" "$out/root"
echo "$want" >"$out/stamp"
echo "hack/systemd-host: done ($(du -sh "$out/root" | cut -f1))" >&2
