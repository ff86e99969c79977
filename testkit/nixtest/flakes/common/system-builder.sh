# Builds a stand-in NixOS system: $out/bin/switch-to-configuration emulates activation
# observably (see testkit/nixtest), $out/nixos-version names the fixture's "commit".
# Runs as the builder of a builtins.derivation: no PATH beyond the base system.
PATH=/usr/bin:/bin
set -eu
echo "nio-fixture: building system $systemName version $fixtureVersion"
mkdir -p "$out/bin"
printf '%s\n' "$fixtureVersion" > "$out/nixos-version"
sed -e "s|@out@|$out|g" -e "s|@activation@|$activation|g" "$switchScript" > "$out/bin/switch-to-configuration"
chmod 0555 "$out/bin/switch-to-configuration"
echo "nio-fixture: done"
