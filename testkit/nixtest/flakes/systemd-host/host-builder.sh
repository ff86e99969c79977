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
sed -e "s|@out@|$out|g" -e "s|@activation@|$activation|g" -e "s|@delay@|$delay|g" \
	-e "s|@hold@|$hold|g" "$switchScript" >"$out/bin/switch-to-configuration"
chmod 0555 "$out/bin/switch-to-configuration"
echo "nio-fixture: done"
