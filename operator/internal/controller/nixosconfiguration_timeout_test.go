package controller

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/operator/internal/install"
)

// TestHungApplyTimesOutFreesTheMachineAndIsRetried: a host whose apply never ends
// (a hung build, a silent agent) used to pin a worker and the Machine's lock for
// good. After spec.timeout (+ the wait margin) the operation is recorded Failed with
// reason Timeout, a Warning event says so, the lock is released, and the next pass
// — after the usual backoff — runs and applies.
func TestHungApplyTimesOutFreesTheMachineAndIsRetried(t *testing.T) {
	f := newFixture(t)
	commit := f.commit("1")
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	host.Set(func(h *hosttest.Host) { h.Block = make(chan struct{}) }) // never closed: hung
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) {
		c.Spec.Timeout = &metav1.Duration{Duration: time.Second}
		c.Spec.Rollback.Enabled = ptrTo(false)
	}))

	eventually(t, 30*time.Second, "the hung apply recorded as timed out", func() error {
		c := getConfig(t, f.ns, "worker-config")
		ready := condition(c.Status.Conditions, nio.ConditionReady)
		if ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != ReasonTimeout {
			return fmt.Errorf("Ready = %+v", ready)
		}
		return nil
	})
	c := getConfig(t, f.ns, "worker-config")
	if len(c.Status.History) != 1 || c.Status.History[0].Result != nio.ResultFailed || !strings.HasPrefix(c.Status.History[0].Message, "timed out after") {
		t.Errorf("history = %+v, want one Failed entry \"timed out after …\"", c.Status.History)
	}
	if c.Status.CurrentOperation != nil || c.Status.AppliedCommit != "" {
		t.Errorf("currentOperation %+v, appliedCommit %q: the timed-out operation must be over and not applied", c.Status.CurrentOperation, c.Status.AppliedCommit)
	}
	var warned bool
	for _, e := range eventsOf(t, f.ns, "worker-config") {
		warned = warned || e.Type == corev1.EventTypeWarning && e.Reason == ReasonTimeout
	}
	if !warned {
		t.Error("no Warning event with reason Timeout")
	}
	var timeouts []time.Duration
	host.Set(func(h *hosttest.Host) { timeouts = append(timeouts, h.Timeouts...) })
	if len(timeouts) == 0 || timeouts[0] != time.Second {
		t.Errorf("the host was asked with timeouts %v, want spec.timeout 1s", timeouts)
	}

	// The host recovers; the Machine is not locked by the operation that hung.
	host.Set(func(h *hosttest.Host) { h.Block = nil })
	f.waitApplied("worker-config", "worker-01", commit)
}

// TestTimedOutInstallSaysTimeoutAndBacksOff: nixos-anywhere running out of
// --install-timeout ends with reason Timeout, and is not re-run at once (an install
// may wipe the host).
func TestTimedOutInstallSaysTimeoutAndBacksOff(t *testing.T) {
	f := newFixture(t)
	f.commit("1")
	fleet := hosttest.NewFleet()
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp = false })
	installer := &hosttest.Installer{Fleet: fleet, Fail: fmt.Errorf("install %s/worker-01: %w after 1h0m0s (process group killed)", f.ns, install.ErrTimeout)}
	f.op = startOperator(t, f.ns, fleet, installer)
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) { c.Spec.FullInstall = true }))

	eventually(t, 30*time.Second, "the install timed out", func() error {
		c := getConfig(t, f.ns, "worker-config")
		ready := condition(c.Status.Conditions, nio.ConditionReady)
		installed := condition(c.Status.Conditions, nio.ConditionInstalled)
		if ready == nil || ready.Reason != ReasonTimeout || ready.Status != metav1.ConditionFalse || installed == nil || installed.Reason != ReasonTimeout {
			return fmt.Errorf("Ready = %+v, Installed = %+v", ready, installed)
		}
		return nil
	})
	// RetryBase is 2s in this suite: the second run comes no sooner.
	runs := installer.Count()
	time.Sleep(time.Second)
	if n := installer.Count(); n != runs {
		t.Errorf("the timed-out install ran again within 1s (%d → %d runs), want backoff", runs, n)
	}
	c := getConfig(t, f.ns, "worker-config")
	if ready := condition(c.Status.Conditions, nio.ConditionReady); ready == nil || ready.Reason != ReasonTimeout {
		t.Errorf("Ready while backing off = %+v, want reason Timeout", ready)
	}
}
