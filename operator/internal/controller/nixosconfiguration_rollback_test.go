package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// requestRollback sets the rollback annotation (and spec.suspend, as nio rollback
// does, when suspend).
func (f *fixture) requestRollback(name, value string, suspend bool) {
	f.t.Helper()
	c := getConfig(f.t, f.ns, name)
	patch := client.MergeFrom(c.DeepCopy())
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[nio.RollbackAnnotation] = value
	c.Spec.Suspend = suspend
	if err := env.Client.Patch(context.Background(), c, patch); err != nil {
		f.t.Fatal(err)
	}
}

// waitRollbackHandled waits for the request's verdict and returns the configuration.
func (f *fixture) waitRollbackHandled(name, value, reason string) *nio.NixosConfiguration {
	f.t.Helper()
	var c *nio.NixosConfiguration
	eventually(f.t, 30*time.Second, "rollback "+value+" handled", func() error {
		c = getConfig(f.t, f.ns, name)
		ready := condition(c.Status.Conditions, nio.ConditionReady)
		if c.Status.LastHandledRollbackAt != value || ready == nil || ready.Reason != reason {
			return fmt.Errorf("lastHandledRollbackAt %q, Ready %v", c.Status.LastHandledRollbackAt, ready)
		}
		return nil
	})
	return c
}

func TestRollbackActivatesThePreviousGenerationAndResumeReapplies(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01"))
	f.waitApplied("worker-config", "worker-01", first)
	second := f.commit("2")
	f.waitApplied("worker-config", "worker-01", second)
	host := fleet.Host("worker-01")

	f.requestRollback("worker-config", "previous@2026-01-01T00:00:00Z", true)
	c := f.waitRollbackHandled("worker-config", "previous@2026-01-01T00:00:00Z", ReasonRolledBackByUser)
	acts := host.Activations()
	if len(acts) != 1 || acts[0].Requested != 0 || acts[0].Generation != 1 || acts[0].ConfirmTimeout <= 0 {
		t.Fatalf("activations %+v, want generation 1 with a confirm window", acts)
	}
	st := c.Status
	if st.AppliedCommit != first || st.AppliedSystem != host.SystemOf(1) || st.CurrentOperation != nil {
		t.Errorf("after the rollback: appliedCommit %q, appliedSystem %q (generation 1 is %q), currentOperation %v",
			st.AppliedCommit, st.AppliedSystem, host.SystemOf(1), st.CurrentOperation)
	}
	if h := st.History[0]; h.Action != "rollback" || h.Generation != 1 || h.Commit != first || h.Result != nio.ResultSucceeded {
		t.Errorf("history[0] %+v", h)
	}
	if stalled := condition(st.Conditions, nio.ConditionStalled); stalled == nil || stalled.Reason != ReasonRolledBackByUser {
		t.Errorf("Stalled %v, want RolledBackByUser", stalled)
	}
	eventually(t, 10*time.Second, "the Machine shows the commit it runs", func() error {
		if m := getMachine(t, f.ns, "worker-01"); m.Status.AppliedCommit != first {
			return fmt.Errorf("Machine appliedCommit %q", m.Status.AppliedCommit)
		}
		return nil
	})
	if n := len(host.Ops()); n != 2 {
		t.Errorf("%d applies while suspended, want the 2 before", n)
	}
	found := false
	for _, e := range eventsOf(t, f.ns, "worker-config") {
		found = found || e.Reason == "RolledBack"
	}
	if !found {
		t.Error("no RolledBack event")
	}

	// The same kind of request again, by number: generation 2 runs again.
	f.requestRollback("worker-config", "2@second", true)
	c = f.waitRollbackHandled("worker-config", "2@second", ReasonRolledBackByUser)
	if c.Status.AppliedCommit != second || len(host.Activations()) != 2 {
		t.Errorf("after rolling forward to generation 2: appliedCommit %q, activations %+v", c.Status.AppliedCommit, host.Activations())
	}

	// Resume: the ref's commit is applied again.
	c = getConfig(t, f.ns, "worker-config")
	patch := client.MergeFrom(c.DeepCopy())
	c.Spec.Suspend = false
	if err := env.Client.Patch(context.Background(), c, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "resume re-applies", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if ready := condition(c.Status.Conditions, nio.ConditionReady); len(host.Ops()) != 3 || ready == nil || ready.Reason != ReasonSucceeded {
			return fmt.Errorf("%d applies, Ready %v", len(host.Ops()), ready)
		}
		return nil
	})
}

func TestRollbackWaitsForSuspendAndNeedsTheAgent(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01"))
	f.waitApplied("worker-config", "worker-01", first)
	host := fleet.Host("worker-01")

	f.requestRollback("worker-config", "previous@1", false)
	eventually(t, 10*time.Second, "RollbackNeedsSuspend", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if ready := condition(c.Status.Conditions, nio.ConditionReady); ready == nil || ready.Reason != ReasonRollbackNeedsSuspend || c.Status.LastHandledRollbackAt != "" {
			return fmt.Errorf("Ready %v, lastHandledRollbackAt %q", ready, c.Status.LastHandledRollbackAt)
		}
		return nil
	})

	host.Set(func(h *hosttest.Host) { h.NoRollbackFeature = true })
	f.requestRollback("worker-config", "previous@2", true)
	f.waitRollbackHandled("worker-config", "previous@2", ReasonRollbackNeedsAgent)

	host.Set(func(h *hosttest.Host) { h.NoRollbackFeature, h.AgentUp = false, false })
	f.requestRollback("worker-config", "previous@3", true)
	c := f.waitRollbackHandled("worker-config", "previous@3", ReasonRollbackNeedsAgent)

	host.Set(func(h *hosttest.Host) { h.AgentUp = true })
	f.requestRollback("worker-config", "previous@4", true)
	c = f.waitRollbackHandled("worker-config", "previous@4", ReasonRollbackFailed)
	if len(host.Ops()) != 1 || c.Status.AppliedCommit != first || c.Status.History[0].Result != nio.ResultFailed {
		t.Errorf("a rollback without an earlier generation: %d applies, appliedCommit %q, history[0] %+v", len(host.Ops()), c.Status.AppliedCommit, c.Status.History[0])
	}

	f.requestRollback("worker-config", "seven@5", true)
	f.waitRollbackHandled("worker-config", "seven@5", ReasonInvalidRollback)
	if acts := host.Activations(); len(acts) != 1 || acts[0].Outcome != "Failed" {
		t.Errorf("activations %+v, want only the failed one", acts)
	}
}
