# Builds the systemd-host fixture's system (see flake.nix). Runs as the builder of a
# builtins.derivation: no PATH beyond the base system.
PATH=/usr/bin:/bin
set -eu
echo "nio-fixture: building system version $fixtureVersion (kernel $kernelVersion)"
mkdir -p "$out/bin"
printf '%s\n' "$fixtureVersion" >"$out/nixos-version"
printf '%s\n' "$libGreeting" >"$out/fixture-lib"
# What NixOS's reboot check compares: the links' targets, never their content.
ln -s "/nix/store/00000000000000000000000000000000-linux-$kernelVersion/bzImage" "$out/kernel"
ln -s "/nix/store/00000000000000000000000000000000-initrd-linux-$kernelVersion/initrd" "$out/initrd"
# The system's service (service.txt), installed by switch-to-configuration. "crash"
# is Type=notify and never notifies: it is activating, never active, until it exits 1
# — a service that dies on its new configuration, deterministically never seen up.
case "$service" in
ok) unit_type=simple exec_start='/bin/sleep infinity' ;;
crash) unit_type=notify exec_start="/bin/sh -c 'echo nio-fixture-web: crashing on its configuration; sleep 1; exit 1'" ;;
*) unit_type='' exec_start='' ;;
esac
if [ -n "$exec_start" ]; then
	mkdir -p "$out/etc"
	printf '[Unit]\nDescription=nio fixture web (%s)\n[Service]\nType=%s\nExecStart=%s\nRestart=no\n' \
		"$service" "$unit_type" "$exec_start" >"$out/etc/nio-fixture-web.service"
fi
sed -e "s|@out@|$out|g" -e "s|@activation@|$activation|g" -e "s|@delay@|$delay|g" \
	-e "s|@hold@|$hold|g" "$switchScript" >"$out/bin/switch-to-configuration"
chmod 0555 "$out/bin/switch-to-configuration"
echo "nio-fixture: done"
