package controller

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/operator/internal/transport"
)

// withHealthChecks gives a configuration the guide's checks: a units check, an HTTP
// GET of a loopback port and a command; interval, expectStatus and the command's
// timeout are left to the defaults.
func withHealthChecks(c *nio.NixosConfiguration) {
	c.Spec.HealthChecks = &nio.HealthChecks{
		Timeout: &metav1.Duration{Duration: 45 * time.Second},
		Checks: []nio.HealthCheck{
			{Name: "units", Units: &nio.UnitsHealthCheck{Names: []string{"nginx.service"}, NoNewFailures: true}},
			{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: "http://127.0.0.1:8080/health"}},
			{Name: "db", Command: &nio.CommandHealthCheck{Command: []string{"/run/current-system/sw/bin/pg_isready", "-q"}}},
		},
	}
}

// guideChecksAtHost is what withHealthChecks must reach the host as.
var guideChecksAtHost = &transport.HealthChecks{Timeout: 45 * time.Second, Interval: time.Second, Checks: []transport.HealthCheck{
	{Name: "units", Units: &transport.UnitsCheck{Units: []string{"nginx.service"}, NoNewFailures: true}},
	{Name: "web", HTTP: &transport.HTTPCheck{URL: "http://127.0.0.1:8080/health", ExpectStatus: 200}},
	{Name: "db", Command: &transport.CommandCheck{Argv: []string{"/run/current-system/sw/bin/pg_isready", "-q"}, Timeout: 30 * time.Second}},
}}

// waitReady waits for Ready=False with reason.
func (f *fixture) waitReady(config, reason string) *metav1.Condition {
	f.t.Helper()
	var ready *metav1.Condition
	eventually(f.t, 30*time.Second, "Ready=False "+reason, func() error {
		ready = condition(getConfig(f.t, f.ns, config).Status.Conditions, nio.ConditionReady)
		if ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != reason {
			return fmt.Errorf("Ready = %+v", ready)
		}
		return nil
	})
	f.t.Logf("Ready: %s: %s", ready.Reason, ready.Message)
	return ready
}

// waitWarning waits for a Warning event of the configuration with reason, and
// returns its note.
func (f *fixture) waitWarning(config, reason string) string {
	f.t.Helper()
	var note string
	eventually(f.t, 30*time.Second, "Warning event "+reason, func() error {
		for _, e := range eventsOf(f.t, f.ns, config) {
			if e.Type == corev1.EventTypeWarning && e.Reason == reason {
				note = e.Note
				f.t.Logf("Warning event %s: %s", reason, note)
				return nil
			}
		}
		return fmt.Errorf("no Warning event %s", reason)
	})
	return note
}

// TestFailedHealthCheckRollsBackKeepsAppliedCommitAndBacksOff: the checks reach the
// host as the spec says; a commit whose new system fails one is rolled back by the
// agent and recorded so — history RolledBack naming the check, Ready=False
// HealthCheckFailed, a Warning event, the metric — while both the configuration and
// the Machine keep the last good commit, and the same commit is retried with backoff,
// not rebuilt in a loop. A fixed commit recovers.
func TestFailedHealthCheckRollsBackKeepsAppliedCommitAndBacksOff(t *testing.T) {
	f := newFixture(t)
	good := f.commit("1")
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", withHealthChecks))
	f.waitApplied("worker-config", "worker-01", good)
	ops := host.Ops()
	if len(ops) != 1 || ops[0].Transport != nio.TransportAgent || !reflect.DeepEqual(ops[0].HealthChecks, guideChecksAtHost) ||
		ops[0].Health == nil || !ops[0].Health.Passed {
		t.Fatalf("host saw %+v, want one agent switch carrying the spec's checks (with defaults), passed", ops)
	}

	// The next commit's system fails the web check. Apply is held until the failure
	// is set up, so the operator can't switch before.
	hold := make(chan struct{})
	host.Set(func(h *hosttest.Host) { h.Block = hold })
	bad := f.commit("2")
	host.Set(func(h *hosttest.Host) {
		h.FailHealth[bad] = hosttest.HealthFailure{Check: "web", Message: "GET http://127.0.0.1:8080/health: connection refused"}
		h.Block = nil
	})
	close(hold)

	eventually(t, 30*time.Second, "rollback recorded", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if len(c.Status.History) < 2 || c.Status.History[0].Result != nio.ResultRolledBack || c.Status.History[0].Commit != bad {
			return fmt.Errorf("history %+v", c.Status.History)
		}
		return nil
	})
	c := getConfig(t, f.ns, "worker-config")
	m := getMachine(t, f.ns, "worker-01")
	if c.Status.AppliedCommit != good || m.Status.AppliedCommit != good || c.Status.LastAttemptedCommit != bad {
		t.Errorf("applied %s / Machine %s / attempted %s, want applied %s and attempted %s",
			c.Status.AppliedCommit, m.Status.AppliedCommit, c.Status.LastAttemptedCommit, good, bad)
	}
	if msg := c.Status.History[0].Message; !strings.Contains(msg, "health check web failed") || !strings.Contains(msg, "connection refused") {
		t.Errorf("history message %q, want the check and what it saw", msg)
	}
	ready := f.waitReady("worker-config", ReasonHealthCheckFailed)
	if !strings.Contains(ready.Message, "health check web") || !strings.Contains(ready.Message, "main@sha1:"+bad) {
		t.Errorf("Ready message %q, want the check and the revision", ready.Message)
	}
	if applied := condition(c.Status.Conditions, nio.ConditionApplied); applied == nil || applied.Status != metav1.ConditionFalse || applied.Reason != ReasonHealthCheckFailed {
		t.Errorf("Applied = %+v, want False/%s", applied, ReasonHealthCheckFailed)
	}
	if note := f.waitWarning("worker-config", ReasonHealthCheckFailed); !strings.Contains(note, "web") || !strings.Contains(note, "connection refused") {
		t.Errorf("Warning event %q, want the check and its message", note)
	}
	if n := testutil.ToFloat64(f.op.metrics.HealthCheckFailures.WithLabelValues(f.ns, "worker-config", "web")); n < 1 {
		t.Errorf("nio_health_check_failures_total{check=web} = %v, want ≥ 1", n)
	}
	if n := testutil.ToFloat64(f.op.metrics.HealthCheckFailures.WithLabelValues(f.ns, "worker-config", "db")); n != 0 {
		t.Errorf("nio_health_check_failures_total{check=db} = %v, want 0 (it passed)", n)
	}

	// Retries of the same commit back off (2s, 4s, … in this suite), though the
	// Machine's probes bring a pass every 2s.
	calls := host.Calls()
	time.Sleep(4 * time.Second)
	if n := host.Calls() - calls; n > 2 {
		t.Errorf("%d applies of a commit that failed its health check in 4s, want backoff", n)
	}
	if g := getMachine(t, f.ns, "worker-01"); g.Status.AppliedCommit != good {
		t.Errorf("Machine appliedCommit %s while backing off, want %s", g.Status.AppliedCommit, good)
	}

	fixed := f.commit("3")
	f.waitApplied("worker-config", "worker-01", fixed)
	if ready := condition(getConfig(t, f.ns, "worker-config").Status.Conditions, nio.ConditionReady); ready == nil || ready.Status != metav1.ConditionTrue {
		t.Errorf("Ready after the fix = %+v", ready)
	}
}

// TestSSHOnlyMachineWithHealthChecksIsNotApplied: SSH can't run health checks, so a
// Machine with the agent disabled gets nothing — not an unchecked switch —, says why
// (HealthChecksNeedAgent, a Warning event) and is asked again only after a while.
func TestSSHOnlyMachineWithHealthChecksIsNotApplied(t *testing.T) {
	f := newFixture(t)
	f.commit("1")
	ssh := f.machine("ssh-01")
	ssh.Spec.Agent.Disabled = true
	f.create(ssh)
	fleet := hosttest.NewFleet()
	host := fleet.Host("ssh-01")
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("ssh-config", "ssh-01", withHealthChecks))

	ready := f.waitReady("ssh-config", ReasonHealthChecksNeedAgent)
	if !strings.Contains(ready.Message, "spec.agent.disabled") || !strings.Contains(ready.Message, "SSH") {
		t.Errorf("Ready message %q, want it to say the agent is disabled and SSH can't run checks", ready.Message)
	}
	f.waitWarning("ssh-config", ReasonHealthChecksNeedAgent)
	c := getConfig(t, f.ns, "ssh-config")
	if c.Status.AppliedCommit != "" || c.Status.CurrentOperation != nil || len(c.Status.History) != 0 {
		t.Errorf("status %+v: nothing must have been applied or be in flight", c.Status)
	}
	if ops := host.Ops(); len(ops) != 0 {
		t.Fatalf("host ran %+v", ops)
	}
	// needAgentRetry is 4s in this suite: no new attempt within 3s.
	calls := host.Calls()
	time.Sleep(3 * time.Second)
	if n := host.Calls() - calls; n > 1 {
		t.Errorf("%d attempts in 3s, want a slow retry", n)
	}
	if m := getMachine(t, f.ns, "ssh-01"); m.Status.AppliedCommit != "" {
		t.Errorf("Machine appliedCommit %q", m.Status.AppliedCommit)
	}
}

// TestAgentDownWithHealthChecksWaitsForTheAgent: with the agent unreachable the
// fallback would use SSH; with health checks it must not. Once the agent answers,
// the configuration is applied through it.
func TestAgentDownWithHealthChecksWaitsForTheAgent(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	host.Set(func(h *hosttest.Host) { h.AgentUp = false })
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", withHealthChecks))

	ready := f.waitReady("worker-config", ReasonHealthChecksNeedAgent)
	if !strings.Contains(ready.Message, "unreachable") {
		t.Errorf("Ready message %q, want the agent unreachable", ready.Message)
	}
	if ops := host.Ops(); len(ops) != 0 {
		t.Fatalf("host ran %+v over SSH", ops)
	}
	host.Set(func(h *hosttest.Host) { h.AgentUp = true })
	f.waitApplied("worker-config", "worker-01", first)
	if ops := host.Ops(); len(ops) != 1 || ops[0].Transport != nio.TransportAgent || ops[0].HealthChecks == nil {
		t.Fatalf("host saw %+v, want one agent switch with the checks", ops)
	}
}

// TestAgentWithoutTheHealthChecksFeatureIsNotApplied: an agent too old to run the
// checks would switch unchecked; it gets nothing until it is upgraded.
func TestAgentWithoutTheHealthChecksFeatureIsNotApplied(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	host.Set(func(h *hosttest.Host) { h.NoHealthFeature, h.AgentVersion = true, "0.1.0" })
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", withHealthChecks))

	ready := f.waitReady("worker-config", ReasonHealthChecksNeedAgent)
	if !strings.Contains(ready.Message, "0.1.0") || !strings.Contains(ready.Message, "too old") {
		t.Errorf("Ready message %q, want the agent version too old", ready.Message)
	}
	if ops := host.Ops(); len(ops) != 0 {
		t.Fatalf("host ran %+v", ops)
	}
	host.Set(func(h *hosttest.Host) { h.NoHealthFeature, h.AgentVersion = false, "0.2.0" })
	f.waitApplied("worker-config", "worker-01", first)
}

// TestHealthChecksTheAgentRefusesStall: checks the agent refuses before building (a
// URL off the host) are the user's to fix: Stalled, InvalidHealthChecks, and no new
// attempt per Machine update; a spec change tries again.
func TestHealthChecksTheAgentRefusesStall(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	host.Set(func(h *hosttest.Host) {
		h.InvalidHealth = "check web: the host 10.9.9.9 of http://10.9.9.9/health is not this host (set allowRemote to check another host)"
	})
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) {
		withHealthChecks(c)
		c.Spec.HealthChecks.Checks[1].HTTP.URL = "http://10.9.9.9/health"
	}))

	ready := f.waitReady("worker-config", ReasonInvalidHealthChecks)
	if !strings.Contains(ready.Message, "invalid health checks") || !strings.Contains(ready.Message, "10.9.9.9") {
		t.Errorf("Ready message %q, want the agent's refusal", ready.Message)
	}
	c := getConfig(t, f.ns, "worker-config")
	if st := condition(c.Status.Conditions, nio.ConditionStalled); st == nil || st.Status != metav1.ConditionTrue || st.Reason != ReasonInvalidHealthChecks {
		t.Errorf("Stalled = %+v", st)
	}
	if c.Status.CurrentOperation != nil || c.Status.AppliedCommit != "" {
		t.Errorf("status %+v: nothing applied or in flight", c.Status)
	}
	// The Machine's probes bring a pass every 2s: none reaches the host again.
	calls := host.Calls()
	time.Sleep(3 * time.Second)
	if n := host.Calls() - calls; n != 0 {
		t.Errorf("%d new attempts with the same refused checks", n)
	}

	host.Set(func(h *hosttest.Host) { h.InvalidHealth = "" })
	patch := client.MergeFrom(c.DeepCopy())
	c.Spec.HealthChecks.Checks[1].HTTP.AllowRemote = true
	if err := env.Client.Patch(context.Background(), c, patch); err != nil {
		t.Fatal(err)
	}
	f.waitApplied("worker-config", "worker-01", first)
}
