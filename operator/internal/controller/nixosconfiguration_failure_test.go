package controller

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestFailingBuildKeepsAppliedCommit: a commit that does not build leaves
// appliedCommit on the last good commit, says why, and a fixed commit recovers.
func TestFailingBuildKeepsAppliedCommit(t *testing.T) {
	f := newFixture(t)
	good := f.commit("1")
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01"))
	f.waitApplied("worker-config", "worker-01", good)

	host := fleet.Host("worker-01")
	bad := f.repo.CommitFiles(t, map[string]string{"flake.nix": "{ broken"}, "broken")
	host.Set(func(h *hosttest.Host) {
		h.FailCommits[bad] = []string{"error: syntax error, unexpected end of file", "       at /build/source/flake.nix:1:9"}
	})
	eventually(t, 30*time.Second, "failure recorded", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if c.Status.LastAttemptedCommit != bad || len(c.Status.History) < 2 || c.Status.History[0].Result != nio.ResultFailed {
			return errorf("lastAttemptedCommit %s, history %d", c.Status.LastAttemptedCommit, len(c.Status.History))
		}
		return nil
	})
	c := getConfig(t, f.ns, "worker-config")
	m := getMachine(t, f.ns, "worker-01")
	if c.Status.AppliedCommit != good || m.Status.AppliedCommit != good {
		t.Errorf("appliedCommit = %s / Machine %s, want the last good %s", c.Status.AppliedCommit, m.Status.AppliedCommit, good)
	}
	ready := condition(c.Status.Conditions, nio.ConditionReady)
	if ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != ReasonApplyFailed {
		t.Errorf("Ready = %+v, want False/%s", ready, ReasonApplyFailed)
	}
	var warning *string
	for _, e := range eventsOf(t, f.ns, "worker-config") {
		if e.Type == corev1.EventTypeWarning && e.Reason == ReasonApplyFailed {
			warning = &e.Note
		}
	}
	if warning == nil || !strings.Contains(*warning, "syntax error, unexpected end of file") || !strings.Contains(*warning, "main@sha1:"+bad) {
		t.Errorf("Warning event = %v, want the error lines and the revision", warning)
	}

	// Retries of the same broken input back off (2s, 4s, ... in this suite), not one
	// per 1s poll.
	applies := len(host.Ops())
	time.Sleep(4 * time.Second)
	if n := len(host.Ops()) - applies; n > 2 {
		t.Errorf("%d retries of an unchanged broken commit in 4s, want backoff", n)
	}

	fixed := f.commit("3")
	f.waitApplied("worker-config", "worker-01", fixed)
	c = getConfig(t, f.ns, "worker-config")
	if ready := condition(c.Status.Conditions, nio.ConditionReady); ready == nil || ready.Status != metav1.ConditionTrue {
		t.Errorf("Ready after the fix = %+v", ready)
	}
}

// TestRolledBackSwitchIsNotApplied: a switch the operator could not confirm (the
// new system cut it off) rolls back on the host, and the commit is not recorded as
// applied.
func TestRolledBackSwitchIsNotApplied(t *testing.T) {
	f := newFixture(t)
	good := f.commit("1")
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01"))
	f.waitApplied("worker-config", "worker-01", good)

	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.ConfirmFails = true })
	cut := f.commit("2")
	eventually(t, 30*time.Second, "rollback recorded", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if len(c.Status.History) < 2 || c.Status.History[0].Result != nio.ResultRolledBack || c.Status.History[0].Commit != cut {
			return errorf("history %+v", c.Status.History)
		}
		return nil
	})
	c := getConfig(t, f.ns, "worker-config")
	m := getMachine(t, f.ns, "worker-01")
	if c.Status.AppliedCommit != good || m.Status.AppliedCommit != good || c.Status.LastAttemptedCommit != cut {
		t.Errorf("applied %s / Machine %s / attempted %s, want applied %s and attempted %s",
			c.Status.AppliedCommit, m.Status.AppliedCommit, c.Status.LastAttemptedCommit, good, cut)
	}
	if ready := condition(c.Status.Conditions, nio.ConditionReady); ready == nil || ready.Reason != ReasonRolledBack || ready.Status != metav1.ConditionFalse {
		t.Errorf("Ready = %+v, want False/%s", ready, ReasonRolledBack)
	}
}

// TestAgentDownAppliesOverSSH: with the agent unreachable the apply goes over SSH,
// and the history says so.
func TestAgentDownAppliesOverSSH(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp = false })
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01"))
	f.waitApplied("worker-config", "worker-01", first)
	c := getConfig(t, f.ns, "worker-config")
	if len(c.Status.History) != 1 || c.Status.History[0].Transport != nio.TransportSSH {
		t.Fatalf("history = %+v, want one apply over ssh", c.Status.History)
	}
	eventually(t, 20*time.Second, "Machine shows the agent down", func() error {
		m := getMachine(t, f.ns, "worker-01")
		if cond := condition(m.Status.Conditions, nio.ConditionAgentConnected); cond == nil || cond.Status != metav1.ConditionFalse {
			return errorf("AgentConnected = %+v", cond)
		}
		if cond := condition(m.Status.Conditions, nio.ConditionReachable); cond == nil || cond.Status != metav1.ConditionTrue {
			return errorf("Reachable = %+v", cond)
		}
		return nil
	})
}
