//go:build e2e

package systemdhost

import (
	"os"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// An apply through the agent builds a flake whose lock has an input (a git+file
// repository: git on the unit's PATH and a writable Nix cache are needed) from
// inside the unit's sandbox, and activates it through systemd-run: the activation
// runs in a transient unit of its own, not in nio-agent.service. The switch changes
// the agent's own unit (a drop-in) and reloads systemd, but restartIfChanged = false
// keeps the agent running: no deadlock, same process.
func TestApplyBuildsALockedFlakeAndActivatesThroughSystemdRun(t *testing.T) {
	setUp(t)
	ctx := testContext(t, 6*time.Minute)
	pidBefore, err := host.AgentPID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := mustPush(t, nil)
	if err := waitApplied(ctx, p.commit); err != nil {
		t.Fatal(err)
	}
	conf := configurationNow(t, ctx)
	if h := historyOf(conf, p.commit); h == nil || h.Transport != nio.TransportAgent || h.Result != nio.ResultSucceeded {
		t.Fatalf("history entry of %s: %+v, want a succeeded agent apply", p.commit, h)
	}
	system := conf.Status.AppliedSystem
	greeting, err := os.ReadFile(host.Path(system + "/fixture-lib"))
	if err != nil || strings.TrimSpace(string(greeting)) != libGreeting {
		t.Errorf("the system's fixture-lib = %q (%v), want the locked input's %q", greeting, err, libGreeting)
	}
	current, err := host.Link(ctx, "/run/current-system")
	if err != nil || current != system {
		t.Errorf("/run/current-system = %q (%v), want the applied %q", current, err, system)
	}

	steps, err := activations(p)
	if err != nil {
		t.Fatal(err)
	}
	var done bool
	for _, a := range steps {
		if a.action != "switch" {
			continue
		}
		if !strings.HasPrefix(a.unit, "nio-activate-") || !strings.HasSuffix(a.unit, ".service") {
			t.Errorf("activation step %q ran in unit %q, want a transient nio-activate-*.service", a.step, a.unit)
		}
		done = done || a.step == "done"
	}
	if !done {
		t.Errorf("the switch never finished: %+v", steps)
	}

	pidAfter, err := host.AgentPID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pidAfter != pidBefore {
		t.Errorf("nio-agent's PID went from %d to %d: the switch restarted it", pidBefore, pidAfter)
	}
	dropIns, err := host.UnitProperty(ctx, "nio-agent.service", "DropInPaths")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dropIns, "50-fixture-system.conf") {
		t.Errorf("the switch did not change the agent's unit (DropInPaths %q)", dropIns)
	}
	if reload, _ := host.UnitProperty(ctx, "nio-agent.service", "NeedDaemonReload"); reload != "no" {
		t.Errorf("NeedDaemonReload=%s: the switch did not reload systemd", reload)
	}
}
