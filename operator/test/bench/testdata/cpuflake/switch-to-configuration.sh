#!/bin/sh
# Stand-in for NixOS's switch-to-configuration: with NIO_FIXTURE_STATE set it records
# the activation and, for switch and test, points $NIO_FIXTURE_STATE/current-system
# at this system (what /run/current-system is on NixOS).
PATH=/usr/bin:/bin:$PATH
set -eu
out='@out@'
action="${1:-}"
case "$action" in
switch | boot | test | dry-activate) ;;
*)
	echo "usage: switch-to-configuration switch|boot|test|dry-activate" >&2
	exit 1
	;;
esac
echo "activating the configuration $out ($action)"
if [ -n "${NIO_FIXTURE_STATE:-}" ]; then
	echo "$action $out" >>"$NIO_FIXTURE_STATE/activations.log"
	case "$action" in
	switch | test) ln -sfn "$out" "$NIO_FIXTURE_STATE/current-system" ;;
	esac
fi
