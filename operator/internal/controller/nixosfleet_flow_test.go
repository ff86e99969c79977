package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/operator/internal/transport"
)

// TestFleetRollouts runs the fleet's scenarios, each in a namespace of its own with
// its own operator.
func TestFleetRollouts(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, f *fleetFixture)
	}{
		{"canary passes, then the batches follow in order", fleetCanaryThenBatches},
		{"a failed canary pauses the rollout until promoted", fleetCanaryFailurePauses},
		{"a canary failing its health checks reverts, nothing else moves", fleetCanaryHealthFailureReverts},
		{"a failed batch reverts the Machines moved before", fleetBatchFailureReverts},
		{"Machines leaving and joining the selector", fleetSelectorChange},
		{"a new commit during a batch supersedes the rollout", fleetSupersede},
		{"a Machine held by another configuration is left alone", fleetForeignConfiguration},
		{"spec.paused holds a rollout until cleared", fleetSpecPaused},
		{"manual promotion waits for the annotation", fleetManualPromotion},
		{"what the API server can't refuse stalls, and a Machine watch resumes it", fleetStalls},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newFleetFixture(t)) })
	}
}

func fleetCanaryThenBatches(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02", "web-03", "web-04")
	first := f.commit("1")
	f.create(f.fleet("web", func(fl *nio.NixosFleet) {
		fl.Spec.Strategy = nio.RolloutStrategy{Canary: 1, Batches: []intstr.IntOrString{intstr.FromInt32(2)}}
	}))
	f.waitFleet("web", "first rollout", rolledOut(first, 4))
	firstRev := getFleet(t, f.ns, "web").Status.Rollout.Revision

	// The canary's apply, then one of batch 1's, are held: what moves meanwhile shows
	// the order.
	holdCanary, holdBatch1 := make(chan struct{}), make(chan struct{})
	f.hosts.Host("web-01").Set(func(h *hosttest.Host) { h.Block = holdCanary })
	f.hosts.Host("web-02").Set(func(h *hosttest.Host) { h.Block = holdBatch1 })
	second := f.commit("2")
	applying := func(config, commit string) {
		t.Helper()
		eventually(t, fleetTimeout, config+" applying "+shortCommit(commit), func() error {
			if op := getConfig(t, f.ns, config).Status.CurrentOperation; op == nil || op.Commit != commit {
				return fmt.Errorf("operation %+v", op)
			}
			return nil
		})
	}
	onFirst := func(when string, configs ...string) {
		t.Helper()
		for _, c := range configs {
			if ref := getConfig(t, f.ns, c).Spec.Ref; ref != first {
				t.Errorf("%s: %s moved to %s", when, c, shortCommit(ref))
			}
		}
	}
	applying("web-web-01", second)
	f.waitFleet("web", "the canary in progress", func(fl *nio.NixosFleet) error {
		if ro := fl.Status.Rollout; ro == nil || ro.Commit != second || batchSummary(ro) != "canary/1/Progressing" {
			return fmt.Errorf("not in the canary")
		}
		return nil
	})
	onFirst("while the canary applies", "web-web-02", "web-web-03", "web-web-04")
	f.hosts.Host("web-01").Set(func(h *hosttest.Host) { h.Block = nil })
	close(holdCanary)
	applying("web-web-02", second)
	f.waitFleet("web", "batch 1 in progress", func(fl *nio.NixosFleet) error {
		if ro := fl.Status.Rollout; ro == nil || ro.Commit != second || len(ro.Batches) != 2 || ro.Batches[1].Updated != 1 {
			return fmt.Errorf("web-03 not done in batch 1")
		}
		return nil
	})
	onFirst("while batch 1 applies", "web-web-04")
	f.hosts.Host("web-02").Set(func(h *hosttest.Host) { h.Block = nil })
	close(holdBatch1)
	fl := f.waitFleet("web", "second rollout", rolledOut(second, 4))
	ro := fl.Status.Rollout
	if got := batchSummary(ro); got != "canary/1/Succeeded 1/2/Succeeded 2/1/Succeeded" {
		t.Errorf("batches %s, want canary 1, batch 1 of 2, batch 2 of 1 (the last size repeats)", got)
	}
	if ro.CommitShort != second[:12] || ro.Revision == firstRev || ro.Supersedes != "" || ro.FinishTime == nil ||
		fl.Status.Selected != 4 || fl.Status.Ready != 4 || fl.Status.Failed != 0 || fl.Status.LatestCommit != second {
		t.Errorf("status %s", fleetSummary(fl))
	}
	if condition(fl.Status.Conditions, nio.ConditionReconciling) != nil || condition(fl.Status.Conditions, nio.ConditionStalled) != nil {
		t.Errorf("Reconciling or Stalled present on a completed rollout: %v", fl.Status.Conditions)
	}

	// The hosts saw the order: the canary's apply ended before batch 1's began, and
	// batch 1's before batch 2's.
	op := func(h string) hosttest.AppliedOp {
		ops := f.opsOf(h, second)
		if len(ops) != 1 || ops[0].Outcome != "Succeeded" {
			t.Fatalf("%s: applies of the second commit %+v, want one that succeeded", h, ops)
		}
		return ops[0]
	}
	canary, b1a, b1b, b2 := op("web-01"), op("web-02"), op("web-03"), op("web-04")
	if !b1a.Start.After(canary.End) || !b1b.Start.After(canary.End) {
		t.Errorf("batch 1 started (%v, %v) before the canary ended (%v)", b1a.Start, b1b.Start, canary.End)
	}
	if !b2.Start.After(b1a.End) || !b2.Start.After(b1b.End) {
		t.Errorf("batch 2 started (%v) before batch 1 ended (%v, %v)", b2.Start, b1a.End, b1b.End)
	}

	// Each configuration: the fleet's, pinned to the commit, with what it ran before.
	for _, m := range []string{"web-01", "web-02", "web-03", "web-04"} {
		c := getConfig(t, f.ns, "web-"+m)
		owner := metav1.GetControllerOf(c)
		if owner == nil || owner.Kind != "NixosFleet" || owner.Name != "web" || c.Labels[nio.FleetLabel] != "web" ||
			c.Labels[nio.FleetMachineLabel] != m || c.Spec.Ref != second || c.Spec.MachineRef.Name != m ||
			c.Annotations[nio.FleetRevisionAnnotation] != ro.Revision || c.Spec.Interval.Duration != time.Second {
			t.Errorf("configuration %s: owner %+v labels %v annotations %v spec %+v", c.Name, owner, c.Labels, c.Annotations, c.Spec)
		}
		if prev := previousOf(c); prev == nil || prev.Revision != firstRev || prev.Spec.Ref != first {
			t.Errorf("configuration %s: previous %+v, want the first revision", c.Name, prev)
		}
		if c.Status.AppliedCommit != second || getMachine(t, f.ns, m).Status.AppliedCommit != second {
			t.Errorf("%s applied %s", m, c.Status.AppliedCommit)
		}
	}
	for _, r := range []string{"RolloutStarted", "BatchStarted", "BatchSucceeded", "RolloutCompleted"} {
		f.waitEvent("web", corev1.EventTypeNormal, r)
	}
	if n := testutil.ToFloat64(f.op.metrics.FleetRolloutsFinished.WithLabelValues(rolloutCompleted)); n != 2 {
		t.Errorf("rollouts completed = %v, want 2", n)
	}
	if n := testutil.ToFloat64(f.op.metrics.FleetMachines.WithLabelValues(f.ns, "web", "updated")); n != 4 {
		t.Errorf("updated Machines gauge = %v, want 4", n)
	}
	if n := testutil.ToFloat64(f.op.metrics.FleetPhase.WithLabelValues(f.ns, "web", string(nio.RolloutCompleted))); n != 1 {
		t.Errorf("phase gauge Completed = %v, want 1", n)
	}
}

func fleetCanaryFailurePauses(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02", "web-03")
	first := f.commit("1")
	f.create(f.fleet("web", func(fl *nio.NixosFleet) { fl.Spec.Strategy = nio.RolloutStrategy{Canary: 1} }))
	f.waitFleet("web", "first rollout", rolledOut(first, 3))

	second := f.commit("2")
	f.hosts.Host("web-01").Set(func(h *hosttest.Host) { h.FailCommits[second] = []string{"error: attribute 'web' missing"} })
	fl := f.waitFleet("web", "the canary's failure", phase(second, nio.RolloutPaused, ReasonBatchFailed))
	stalled := condition(fl.Status.Conditions, nio.ConditionStalled)
	if stalled == nil || stalled.Status != metav1.ConditionTrue || stalled.Reason != ReasonBatchFailed ||
		!strings.Contains(stalled.Message, "web-01: ApplyFailed") || !strings.Contains(stalled.Message, "nix build failed") {
		t.Fatalf("Stalled = %+v, want BatchFailed naming web-01 and its configuration's message", stalled)
	}
	if fl.Status.Failed != 1 || batchSummary(fl.Status.Rollout) != "canary/1/Failed" {
		t.Errorf("status %s", fleetSummary(fl))
	}
	for _, h := range []string{"web-02", "web-03"} {
		if ops := f.opsOf(h, second); len(ops) != 0 {
			t.Errorf("%s got an apply of the failed revision while the rollout was paused: %+v", h, ops)
		}
		if c := getConfig(t, f.ns, "web-"+h); c.Spec.Ref != first {
			t.Errorf("%s's configuration moved to %s", h, c.Spec.Ref)
		}
	}
	f.waitEvent("web", corev1.EventTypeWarning, ReasonBatchFailed)

	promoted := time.Now()
	f.promote("web", "go-on")
	fl = f.waitFleet("web", "the rest after the promote", func(fl *nio.NixosFleet) error {
		if err := phase(second, nio.RolloutCompleted, ReasonMachinesFailed)(fl); err != nil {
			return err
		}
		if fl.Status.Updated != 2 || fl.Status.Failed != 1 {
			return fmt.Errorf("updated %d failed %d", fl.Status.Updated, fl.Status.Failed)
		}
		return nil
	})
	if fl.Status.Rollout.LastHandledPromote != "go-on" {
		t.Errorf("lastHandledPromote %q", fl.Status.Rollout.LastHandledPromote)
	}
	for _, h := range []string{"web-02", "web-03"} {
		if ops := f.opsOf(h, second); len(ops) != 1 || !ops[0].Start.After(promoted) {
			t.Errorf("%s: applies of the second commit %+v, want one after the promote", h, ops)
		}
	}
	if c := getConfig(t, f.ns, "web-web-01"); c.Status.AppliedCommit != first {
		t.Errorf("the failed canary records %s applied", c.Status.AppliedCommit)
	}
	f.waitEvent("web", corev1.EventTypeNormal, "Promoted")
}

// The template's health checks reach every host; the canary's fail on the new commit
// (its agent rolled back), so with onFailure Revert the canary's configuration goes
// back to the first commit and no other Machine is given the second.
func fleetCanaryHealthFailureReverts(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02", "web-03")
	first := f.commit("1")
	f.create(f.fleet("web", func(fl *nio.NixosFleet) {
		fl.Spec.Strategy = nio.RolloutStrategy{Canary: 1, OnFailure: nio.FailureRevert}
		fl.Spec.Template.HealthChecks = &nio.HealthChecks{
			Timeout: &metav1.Duration{Duration: time.Minute},
			Checks:  []nio.HealthCheck{{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: "http://127.0.0.1:8080/healthz"}}},
		}
	}))
	f.waitFleet("web", "first rollout", rolledOut(first, 3))
	for _, h := range []string{"web-01", "web-02", "web-03"} {
		ops := f.opsOf(h, first)
		if len(ops) != 1 || ops[0].HealthChecks == nil || len(ops[0].HealthChecks.Checks) != 1 || ops[0].HealthChecks.Checks[0].Name != "web" {
			t.Fatalf("%s: the first commit's apply carried health checks %+v, want the template's", h, ops)
		}
	}

	second := f.commit("2")
	f.hosts.Host("web-01").Set(func(h *hosttest.Host) {
		h.FailHealth[second] = hosttest.HealthFailure{Check: "web", Message: "GET http://127.0.0.1:8080/healthz: connection refused"}
	})
	fl := f.waitFleet("web", "the revert of the canary", phase(second, nio.RolloutReverted, ReasonReverted))
	stalled := condition(fl.Status.Conditions, nio.ConditionStalled)
	if stalled == nil || !strings.Contains(stalled.Message, "web-01: "+ReasonHealthCheckFailed) || !strings.Contains(stalled.Message, "health check web failed") {
		t.Errorf("Stalled = %+v, want Reverted naming web-01, HealthCheckFailed and the check", stalled)
	}
	if ops := f.opsOf("web-01", second); len(ops) != 1 || ops[0].Outcome != transport.OutcomeRolledBack || ops[0].Health == nil || ops[0].Health.Passed {
		t.Errorf("web-01's applies of the second commit %+v, want one, rolled back by its failed checks", ops)
	}
	if got := f.commits("web-01"); !slices.Equal(got, short(first, first)) {
		t.Errorf("web-01 applied %v successfully, want the first commit, and again after the revert", got)
	}
	for _, h := range []string{"web-02", "web-03"} {
		if ops := f.opsOf(h, second); len(ops) != 0 {
			t.Errorf("%s got the commit that failed the canary's health checks: %+v", h, ops)
		}
	}
	c := getConfig(t, f.ns, "web-web-01")
	if c.Spec.Ref != first || c.Status.AppliedCommit != first {
		t.Errorf("the canary's configuration is on %s, applied %s; want both on the first commit", shortCommit(c.Spec.Ref), shortCommit(c.Status.AppliedCommit))
	}
	if h := c.Status.History; len(h) < 2 || h[1].Commit != second || h[1].Result != nio.ResultRolledBack || !strings.Contains(h[1].Message, "health check web failed") {
		t.Errorf("the canary's history %+v, want the second commit RolledBack by its check before the revert", h)
	}
}

func fleetBatchFailureReverts(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02", "web-03", "web-04")
	first := f.commit("1")
	f.create(f.fleet("web", func(fl *nio.NixosFleet) {
		fl.Spec.Strategy = nio.RolloutStrategy{Canary: 1, Batches: []intstr.IntOrString{intstr.FromInt32(1)}, OnFailure: nio.FailureRevert}
	}))
	f.waitFleet("web", "first rollout", rolledOut(first, 4))

	second := f.commit("2")
	// web-03 is batch 2: its build of the second commit fails.
	f.hosts.Host("web-03").Set(func(h *hosttest.Host) { h.FailCommits[second] = []string{"error: builder failed"} })
	fl := f.waitFleet("web", "the revert", phase(second, nio.RolloutReverted, ReasonReverted))
	stalled := condition(fl.Status.Conditions, nio.ConditionStalled)
	if stalled == nil || stalled.Reason != ReasonReverted || !strings.Contains(stalled.Message, "web-03: ApplyFailed") {
		t.Errorf("Stalled = %+v, want Reverted naming web-03", stalled)
	}
	if got := batchSummary(fl.Status.Rollout); got != "canary/1/Succeeded 1/1/Succeeded 2/1/Failed" {
		t.Errorf("batches %s", got)
	}
	want := short(first, second, first)
	for _, h := range []string{"web-01", "web-02"} {
		if got := f.commits(h); !slices.Equal(got, want) {
			t.Errorf("%s applied %v, want %v (the second commit, then the first again)", h, got, want)
		}
	}
	if got := f.commits("web-04"); !slices.Equal(got, short(first)) {
		t.Errorf("web-04, never reached, applied %v", got)
	}
	for _, m := range []string{"web-01", "web-02", "web-03", "web-04"} {
		c := getConfig(t, f.ns, "web-"+m)
		if c.Spec.Ref != first || c.Status.AppliedCommit != first || !childUpdated(c) {
			t.Errorf("%s: configuration on %s, applied %s (updated %v)", m, shortCommit(c.Spec.Ref), shortCommit(c.Status.AppliedCommit), childUpdated(c))
		}
	}
	f.waitEvent("web", corev1.EventTypeWarning, "RevertStarted")
	f.waitEvent("web", corev1.EventTypeNormal, "RevertCompleted")
	if n := testutil.ToFloat64(f.op.metrics.FleetRolloutsFinished.WithLabelValues(rolloutReverted)); n != 1 {
		t.Errorf("rollouts reverted = %v", n)
	}
	// A reverted revision stays reverted: nothing moves on later passes.
	applies := len(f.hosts.Host("web-01").Ops())
	third := f.commit("3")
	f.waitFleet("web", "a new commit after the revert", rolledOut(third, 4))
	if n := len(f.opsOf("web-01", second)); n != 1 || len(f.hosts.Host("web-01").Ops()) != applies+1 {
		t.Errorf("web-01 applied the reverted commit %d times, and %d operations since", n, len(f.hosts.Host("web-01").Ops())-applies)
	}
}

func fleetSelectorChange(t *testing.T, f *fleetFixture) {
	db := map[string]string{"role": "db"}
	f.machines(db, "db-1", "db-2")
	f.machines(map[string]string{"role": "spare"}, "db-3")
	first := f.commit("1")
	f.create(f.fleet("db", func(fl *nio.NixosFleet) {
		fl.Spec.MachineSelector.MatchLabels = db
		fl.Spec.Template.OnRemoveFlake = ".#minimal"
	}))
	f.waitFleet("db", "first rollout", rolledOut(first, 2))

	relabel := func(name, role string) {
		m := getMachine(t, f.ns, name)
		patch := client.MergeFrom(m.DeepCopy())
		m.Labels["role"] = role
		if err := env.Client.Patch(context.Background(), m, patch); err != nil {
			t.Fatal(err)
		}
	}
	relabel("db-2", "spare")
	relabel("db-3", "db")
	eventually(t, fleetTimeout, "db-2's configuration deleted", func() error {
		err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: f.ns, Name: "db-db-2"}, &nio.NixosConfiguration{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	ops := f.hosts.Host("db-2").Ops()
	if last := ops[len(ops)-1]; last.Target.FlakeAttr != "minimal" || last.Outcome != "Succeeded" {
		t.Errorf("db-2's last operation %+v, want the removal to .#minimal", last)
	}
	fl := f.waitFleet("db", "db-3 joined", rolledOut(first, 2))
	if fl.Status.Selected != 2 {
		t.Errorf("selected %d", fl.Status.Selected)
	}
	if c := getConfig(t, f.ns, "db-db-3"); c.Status.AppliedCommit != first {
		t.Errorf("db-3 applied %q", c.Status.AppliedCommit)
	}
	if m := getMachine(t, f.ns, "db-2"); m.Status.HasConfiguration {
		t.Errorf("db-2 still names a configuration: %+v", m.Status)
	}
	f.waitEvent("db", corev1.EventTypeNormal, "MachineLeft")
}

func fleetSupersede(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02", "web-03")
	first := f.commit("1")
	f.create(f.fleet("web", func(fl *nio.NixosFleet) {
		fl.Spec.Strategy = nio.RolloutStrategy{Canary: 1, Batches: []intstr.IntOrString{intstr.FromInt32(1)}}
	}))
	f.waitFleet("web", "first rollout", rolledOut(first, 3))

	block := make(chan struct{})
	f.hosts.Host("web-02").Set(func(h *hosttest.Host) { h.Block = block })
	second := f.commit("2")
	eventually(t, fleetTimeout, "web-02 (batch 1) applying the second commit", func() error {
		c := getConfig(t, f.ns, "web-web-02")
		if op := c.Status.CurrentOperation; op == nil || op.Commit != second {
			return fmt.Errorf("operation %+v", op)
		}
		return nil
	})
	secondRev := getFleet(t, f.ns, "web").Status.Rollout.Revision

	third := f.commit("3")
	f.waitFleet("web", "the superseding rollout", func(fl *nio.NixosFleet) error {
		if ro := fl.Status.Rollout; ro == nil || ro.Commit != third || ro.Supersedes != secondRev {
			return fmt.Errorf("not superseding %s", secondRev)
		}
		return nil
	})
	f.hosts.Host("web-02").Set(func(h *hosttest.Host) { h.Block = nil })
	close(block)
	fl := f.waitFleet("web", "the newest commit everywhere", rolledOut(third, 3))
	if fl.Status.Rollout.Supersedes != secondRev || batchSummary(fl.Status.Rollout) != "canary/1/Succeeded 1/1/Succeeded 2/1/Succeeded" {
		t.Errorf("rollout %s", fleetSummary(fl))
	}
	for h, want := range map[string][]string{
		"web-01": short(first, second, third), // the canary of both
		"web-02": short(first, second, third), // its second-commit apply finished, then the third
		"web-03": short(first, third),         // never reached by the superseded rollout
	} {
		if got := f.commits(h); !slices.Equal(got, want) {
			t.Errorf("%s applied %v, want %v", h, got, want)
		}
	}
	if op := f.opsOf("web-01", third); len(op) != 1 || !op[0].End.Before(f.opsOf("web-02", third)[0].Start) {
		t.Errorf("the new rollout did not start from the canary: %+v", op)
	}
	f.waitEvent("web", corev1.EventTypeNormal, "RolloutSuperseded")
	if n := testutil.ToFloat64(f.op.metrics.FleetRolloutsFinished.WithLabelValues(rolloutSuperseded)); n != 1 {
		t.Errorf("rollouts superseded = %v", n)
	}
}

func fleetForeignConfiguration(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02")
	first := f.commit("1")
	f.create(f.config("legacy", "web-02"))
	f.waitApplied("legacy", "web-02", first)
	f.create(f.fleet("web", func(fl *nio.NixosFleet) { fl.Spec.Template.Flake = ".#web-{name}" }))
	fl := f.waitFleet("web", "the fleet's Machine", rolledOut(first, 1))
	if fl.Status.Selected != 2 || len(fl.Status.Excluded) != 1 || fl.Status.Excluded[0].Name != "web-02" ||
		fl.Status.Excluded[0].Reason != ReasonMachineInUse || !strings.Contains(fl.Status.Excluded[0].Message, "legacy") {
		t.Fatalf("status %s, excluded %+v", fleetSummary(fl), fl.Status.Excluded)
	}
	err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: f.ns, Name: "web-web-02"}, &nio.NixosConfiguration{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("the fleet made a configuration for the Machine in use (%v)", err)
	}
	legacy := getConfig(t, f.ns, "legacy")
	if len(legacy.OwnerReferences) != 0 || legacy.Spec.Flake != ".#worker" || legacy.Spec.Ref != "" && legacy.Spec.Ref != "main" {
		t.Errorf("legacy changed: %+v %+v", legacy.OwnerReferences, legacy.Spec)
	}
	for _, op := range f.hosts.Host("web-02").Ops() {
		if op.Target.FlakeAttr != "worker" {
			t.Errorf("web-02 got the fleet's system: %+v", op)
		}
	}
	if ops := f.hosts.Host("web-01").Ops(); len(ops) != 1 || ops[0].Target.FlakeAttr != "web-web-01" {
		t.Errorf("web-01's applies %+v, want .#web-web-01", ops)
	}
}

func fleetSpecPaused(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02")
	first := f.commit("1")
	f.create(f.fleet("web", func(fl *nio.NixosFleet) {
		fl.Spec.Strategy = nio.RolloutStrategy{Batches: []intstr.IntOrString{intstr.FromInt32(1)}}
	}))
	f.waitFleet("web", "first rollout", rolledOut(first, 2))
	f.patchFleet("web", func(fl *nio.NixosFleet) { fl.Spec.Paused = true })
	f.waitFleet("web", "the pause seen", func(fl *nio.NixosFleet) error {
		if fl.Status.ObservedGeneration != fl.Generation {
			return fmt.Errorf("generation %d not observed", fl.Generation)
		}
		return nil
	})

	second := f.commit("2")
	f.waitFleet("web", "the new revision held", phase(second, nio.RolloutPaused, ReasonPaused))
	for _, h := range []string{"web-01", "web-02"} {
		if ops := f.opsOf(h, second); len(ops) != 0 {
			t.Errorf("%s applied the new commit while paused: %+v", h, ops)
		}
	}
	f.waitEvent("web", corev1.EventTypeNormal, "Paused")
	resumed := time.Now()
	f.patchFleet("web", func(fl *nio.NixosFleet) { fl.Spec.Paused = false })
	f.waitFleet("web", "the rollout after the pause", rolledOut(second, 2))
	for _, h := range []string{"web-01", "web-02"} {
		if ops := f.opsOf(h, second); len(ops) != 1 || !ops[0].Start.After(resumed) {
			t.Errorf("%s: applies of the new commit %+v, want one after the pause ended", h, ops)
		}
	}
}

func fleetManualPromotion(t *testing.T, f *fleetFixture) {
	f.machines(web, "web-01", "web-02", "web-03")
	first := f.commit("1")
	f.create(f.fleet("web", func(fl *nio.NixosFleet) {
		fl.Spec.Strategy = nio.RolloutStrategy{Canary: 1, Promotion: nio.PromotionManual}
	}))
	fl := f.waitFleet("web", "the gate after the canary", phase(first, nio.RolloutPaused, ReasonAwaitingPromotion))
	if fl.Status.Updated != 1 || !strings.Contains(condition(fl.Status.Conditions, nio.ConditionReady).Message, nio.PromoteAnnotation) {
		t.Errorf("status %s", fleetSummary(fl))
	}
	if got := f.commits("web-01"); !slices.Equal(got, short(first)) {
		t.Errorf("the canary applied %v", got)
	}
	for _, m := range []string{"web-02", "web-03"} {
		err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: f.ns, Name: "web-" + m}, &nio.NixosConfiguration{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("%s has a configuration before the promote (%v)", m, err)
		}
	}
	f.promote("web", "1")
	fl = f.waitFleet("web", "the rest after the promote", rolledOut(first, 3))
	if fl.Status.Rollout.LastHandledPromote != "1" {
		t.Errorf("lastHandledPromote %q", fl.Status.Rollout.LastHandledPromote)
	}
}

func fleetStalls(t *testing.T, f *fleetFixture) {
	first := f.commit("1")
	stalled := func(fleet, reason, says string) {
		t.Helper()
		f.waitFleet(fleet, fleet+" stalled "+reason, func(fl *nio.NixosFleet) error {
			st := condition(fl.Status.Conditions, nio.ConditionStalled)
			ready := condition(fl.Status.Conditions, nio.ConditionReady)
			if st == nil || st.Reason != reason || !strings.Contains(st.Message, says) || ready == nil || ready.Status != metav1.ConditionFalse ||
				fl.Status.ObservedGeneration != fl.Generation {
				return fmt.Errorf("not stalled %s saying %q", reason, says)
			}
			return nil
		})
	}
	selecting := func(role string) func(*nio.NixosFleet) {
		return func(fl *nio.NixosFleet) { fl.Spec.MachineSelector.MatchLabels = map[string]string{"role": role} }
	}
	f.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "wrong-token", Namespace: f.ns}, Data: map[string][]byte{"token": []byte("nope")}})
	f.machines(map[string]string{"role": "auth"}, "auth-01")
	f.machines(map[string]string{"role": "canary"}, "canary-01", "canary-02")
	f.machines(map[string]string{"role": "dash"}, "dash-01")
	f.create(
		f.fleet("auth", selecting("auth"), func(fl *nio.NixosFleet) { fl.Spec.Template.CredentialsRef.Name = "wrong-token" }),
		f.fleet("canary", selecting("canary"), func(fl *nio.NixosFleet) { fl.Spec.Strategy.Canary = 3 }),
		f.fleet("empty", selecting("nobody")),
		f.fleet("dash", selecting("dash"), func(fl *nio.NixosFleet) { fl.Spec.Template.Flake = ".#-{name}" }),
	)
	stalled("auth", ReasonAuthFailed, "")
	stalled("canary", ReasonCanaryExceedsFleet, "canary is 3 but the fleet has 2")
	stalled("empty", ReasonNoMachines, "matches no Machine")
	stalled("dash", ReasonNoMachines, "none of the 1 selected")
	if fl := getFleet(t, f.ns, "dash"); len(fl.Status.Excluded) != 1 || fl.Status.Excluded[0].Reason != ReasonInvalidFlake ||
		!strings.Contains(fl.Status.Excluded[0].Message, `".#-dash-01"`) || fl.Status.Selected != 1 {
		t.Errorf("dash: excluded %+v", fl.Status.Excluded)
	}
	f.waitEvent("canary", corev1.EventTypeWarning, ReasonCanaryExceedsFleet)
	for _, name := range []string{"auth-01", "canary-01", "dash-01"} {
		if ops := f.hosts.Host(name).Ops(); len(ops) != 0 {
			t.Errorf("%s was applied to by a stalled fleet: %+v", name, ops)
		}
	}
	// A third Machine makes the canary fit; one for the empty fleet gives it work.
	f.machines(map[string]string{"role": "canary"}, "canary-03")
	f.machines(map[string]string{"role": "nobody"}, "lonely-01")
	f.waitFleet("canary", "the canary fleet, grown", rolledOut(first, 3))
	f.waitFleet("empty", "the empty fleet, given a Machine", rolledOut(first, 1))
	// The right credentials: the Secret watch resumes the fleet.
	sec := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: f.ns, Name: "wrong-token"}, sec); err != nil {
		t.Fatal(err)
	}
	sec.Data["token"] = []byte(testToken)
	if err := env.Client.Update(context.Background(), sec); err != nil {
		t.Fatal(err)
	}
	f.waitFleet("auth", "the fleet with fixed credentials", rolledOut(first, 1))
}
