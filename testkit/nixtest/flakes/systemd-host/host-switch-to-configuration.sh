#!/bin/sh
# switch-to-configuration of the systemd-host fixture: on a systemd host it does, in
# small, what NixOS's does. switch and test install the new nio-agent unit (a drop-in
# naming this system), reload systemd and restart the agent only if its unit allows
# it (X-RestartIfChanged=false, as restartIfChanged = false writes it, forbids it),
# then point /run/current-system here. boot leaves the running system alone (the
# profile the agent set is what the next boot runs). Every step is appended to
# /var/lib/nio-fixture/activations.log with the unit it ran in, so a test can see that
# activation ran in a transient unit of its own, outside nio-agent.service.
PATH=/usr/bin:/bin:/usr/sbin:/sbin
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
state=/var/lib/nio-fixture
mkdir -p "$state"
unit=$(sed -n 's|^0::.*/||p' /proc/self/cgroup)
record() { echo "$* $action $out unit=$unit" >>"$state/activations.log"; }
echo "activating the configuration $out ($action) in $unit"
record start
[ "$action" = dry-activate ] && exit 0
if [ '@delay@' != 0 ]; then
	sleep '@delay@'
fi
# Held once per system: a retry or a rollback to it is not held again.
held="$state/held-${out##*/}"
if [ '@hold@' = yes ] && [ ! -e "$held" ]; then
	: >"$held"
	echo "nio-fixture: holding until /run/nio-fixture/release exists"
	record hold
	while [ ! -e /run/nio-fixture/release ]; do sleep 0.2; done
	rm -f /run/nio-fixture/release
fi
if [ '@activation@' = fail ]; then
	record fail
	echo "error: nio-fixture: activation of $out failed on purpose" >&2
	exit 1
fi
case "$action" in
switch | test)
	mkdir -p /etc/systemd/system/nio-agent.service.d
	printf '[Service]\nEnvironment=NIO_FIXTURE_SYSTEM=%s\n' "$out" \
		>/etc/systemd/system/nio-agent.service.d/50-fixture-system.conf
	systemctl daemon-reload
	if grep -qx 'X-RestartIfChanged=false' /etc/systemd/system/nio-agent.service; then
		echo "nio-agent.service changed; not restarting it (X-RestartIfChanged=false)"
	else
		echo "restarting nio-agent.service"
		systemctl restart nio-agent.service
	fi
	# The system's own service: (re)started when the system has one, stopped and
	# removed when it has none, as NixOS does with the units of the old and new
	# systems. The start is queued (--no-block): a service that dies after its start
	# does not fail the switch, on NixOS either.
	web=/etc/systemd/system/nio-fixture-web.service
	if [ -e "$out/etc/nio-fixture-web.service" ]; then
		cp "$out/etc/nio-fixture-web.service" "$web"
		systemctl daemon-reload
		systemctl reset-failed nio-fixture-web.service 2>/dev/null || true
		systemctl restart --no-block nio-fixture-web.service
		echo "starting nio-fixture-web.service"
	elif [ -e "$web" ]; then
		systemctl stop nio-fixture-web.service || true
		rm -f "$web"
		systemctl daemon-reload
		systemctl reset-failed nio-fixture-web.service 2>/dev/null || true
		echo "stopped nio-fixture-web.service"
	fi
	ln -sfn "$out" /run/current-system
	;;
esac
record done
echo "nio-fixture: $action done"
