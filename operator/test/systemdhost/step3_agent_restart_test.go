//go:build e2e

package systemdhost

import (
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// An activation runs in its own transient unit, so it survives the agent: a
// `systemctl restart nio-agent` while it runs waits for it (the agent drains: the
// operator still confirms over a new connection) and a killed agent leaves it
// running; systemd restarts the agent, which finds the operation, waits for the
// activation's end and opens the confirm window again, and the operator, re-attached,
// confirms. Either way the commit is applied once, and the system activated is the
// one recorded.
func TestActivationSurvivesAgentRestartAndKill(t *testing.T) {
	setUp(t)
	for _, tc := range []struct {
		name string
		// stop is what happens to the agent while the activation is held.
		stop []string
	}{
		{"systemctl restart", []string{"systemctl", "restart", "--no-block", "nio-agent.service"}},
		{"SIGKILL", []string{"systemctl", "kill", "--signal=SIGKILL", "nio-agent.service"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 6*time.Minute)
			pidBefore, err := host.AgentPID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			p := mustPush(t, map[string]string{varHold: "yes"})
			held, err := waitActivation(ctx, p, "hold", "switch")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := host.Exec(ctx, tc.stop...); err != nil {
				t.Fatal(err)
			}
			// The activation's unit still runs, whatever became of the agent.
			if state, err := host.UnitProperty(ctx, held.unit, "ActiveState"); err != nil || state != "active" {
				t.Fatalf("activation unit %s is %q (%v) after the agent was stopped, want active", held.unit, state, err)
			}
			release(t, ctx)
			if err := waitApplied(ctx, p.commit); err != nil {
				t.Fatal(err)
			}
			if _, err := waitActivation(ctx, p, "done", "switch"); err != nil {
				t.Fatal(err)
			}
			conf := configurationNow(t, ctx)
			if h := historyOf(conf, p.commit); h == nil || h.Result != nio.ResultSucceeded || h.Transport != nio.TransportAgent {
				t.Errorf("history entry of %s: %+v, want succeeded via agent", p.commit, h)
			}
			current, err := host.Link(ctx, "/run/current-system")
			if err != nil || current != conf.Status.AppliedSystem || !strings.HasSuffix(current, "-host-"+p.version) {
				t.Errorf("/run/current-system = %q (%v), want the applied %q", current, err, conf.Status.AppliedSystem)
			}
			all, err := activations(p)
			if err != nil {
				t.Fatal(err)
			}
			starts := 0
			for _, a := range all {
				if a.step == "start" && a.action == "switch" {
					starts++
				}
			}
			if starts != 1 {
				t.Errorf("the system was activated %d times, want once: %+v", starts, all)
			}
			pidAfter, err := host.AgentPID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if pidAfter == 0 || pidAfter == pidBefore {
				t.Errorf("agent PID %d → %d: want a new, running agent", pidBefore, pidAfter)
			}
		})
	}
}
