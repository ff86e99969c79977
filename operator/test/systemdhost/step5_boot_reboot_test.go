//go:build e2e

package systemdhost

import (
	"fmt"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// action boot sets the profile and leaves the running system alone: the Machine says
// needsReboot. `systemctl reboot` on the host (systemd-nspawn boots it again) makes
// the new generation the booted and running system: /run/booted-system moves and
// needsReboot goes false, in the Machine's status too.
func TestBootActionThenReboot(t *testing.T) {
	setUp(t)
	ctx := testContext(t, 8*time.Minute)
	t.Cleanup(func() {
		if err := apply(ctx, "configuration.yaml", configuration("switch")); err != nil {
			t.Error(err)
		}
	})
	bootedBefore, err := host.Link(ctx, "/run/booted-system")
	if err != nil {
		t.Fatal(err)
	}
	if bootedBefore == "" {
		// The host first booted before NIO installed a system: unlike a NixOS host
		// it has no booted system yet. One reboot gives it one.
		if err := host.Reboot(ctx); err != nil {
			t.Fatal(err)
		}
		if bootedBefore, err = host.Link(ctx, "/run/booted-system"); err != nil || bootedBefore == "" {
			t.Fatalf("no /run/booted-system after a reboot (%v)", err)
		}
	}
	runningBefore, err := host.Link(ctx, "/run/current-system")
	if err != nil {
		t.Fatal(err)
	}
	if err := apply(ctx, "configuration.yaml", configuration("boot")); err != nil {
		t.Fatal(err)
	}
	p := mustPush(t, map[string]string{varKernel: "2"})
	if err := waitApplied(ctx, p.commit); err != nil {
		t.Fatal(err)
	}
	next := configurationNow(t, ctx).Status.AppliedSystem
	if !strings.HasSuffix(next, "-host-"+p.version) {
		t.Fatalf("applied system %q is not version %s", next, p.version)
	}
	if running, _ := host.Link(ctx, "/run/current-system"); running != runningBefore {
		t.Errorf("boot changed the running system: %q → %q", runningBefore, running)
	}
	if err := waitMachine(ctx, "needsReboot", time.Minute, func(m *nio.Machine) (bool, string) {
		s := m.Status.System
		if s == nil {
			return false, "no system status"
		}
		return s.NeedsReboot && s.CurrentSystem == runningBefore, fmt.Sprintf("%+v", *s)
	}); err != nil {
		t.Fatal(err)
	}

	boots := host.Boots()
	if err := host.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	if host.Boots() != boots+1 {
		t.Errorf("boots %d → %d, want one more", boots, host.Boots())
	}
	booted, err := host.Link(ctx, "/run/booted-system")
	if err != nil || booted != next || booted == bootedBefore {
		t.Errorf("/run/booted-system = %q (%v) after the reboot, want the boot generation %q (was %q)", booted, err, next, bootedBefore)
	}
	if err := waitMachine(ctx, "booted the new generation", 2*time.Minute, func(m *nio.Machine) (bool, string) {
		s := m.Status.System
		if s == nil {
			return false, "no system status"
		}
		return !s.NeedsReboot && s.BootedSystem == next && s.CurrentSystem == next, fmt.Sprintf("%+v", *s)
	}); err != nil {
		t.Fatal(err)
	}
	// The agent came back by itself with the host, its identity and state on disk.
	if err := waitMachine(ctx, "agent connected after the reboot", time.Minute, func(m *nio.Machine) (bool, string) {
		return m.Status.Agent != nil && m.Status.Agent.Connected, fmt.Sprintf("agent %+v", m.Status.Agent)
	}); err != nil {
		t.Fatal(err)
	}
	if c := configurationNow(t, ctx); c.Status.AppliedCommit != p.commit {
		t.Errorf("after the reboot appliedCommit = %s, want %s", c.Status.AppliedCommit, p.commit)
	}
}
