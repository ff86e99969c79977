package controller

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	nio "github.com/homystack/nio/api/v1alpha1"
)

func TestFleetChildNamesAreValidAndDistinct(t *testing.T) {
	if got := fleetChildName("web", "web-01"); got != "web-web-01" {
		t.Errorf("name %q, want web-web-01", got)
	}
	long := strings.Repeat("a", 200)
	a, b := fleetChildName(long, long+"-x"), fleetChildName(long, long+"-y")
	for _, n := range []string{a, b} {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) != 0 {
			t.Errorf("%q: %v", n, errs)
		}
	}
	if a == b {
		t.Error("two long names cut to the same name")
	}
	// A cut that ends on a dot or dash is trimmed: a name must end alphanumeric.
	dotted := strings.Repeat("a", 241) + "." + strings.Repeat("b", 20)
	if errs := validation.IsDNS1123Subdomain(fleetChildName(dotted, "m")); len(errs) != 0 {
		t.Errorf("cut at a dot: %v", errs)
	}
	if got := fleetLabelValue("web"); got != "web" {
		t.Errorf("label %q", got)
	}
	if v := fleetLabelValue(strings.Repeat("m", 100)); len(validation.IsValidLabelValue(v)) != 0 {
		t.Errorf("label value %q is not valid", v)
	}
}

func TestRenderFlakeFillsPlaceholdersOrRefuses(t *testing.T) {
	m := &nio.Machine{ObjectMeta: metav1.ObjectMeta{Name: "web-01"}, Spec: nio.MachineSpec{Hostname: "web1.example.org"}}
	for tmpl, want := range map[string]string{
		".#worker":               ".#worker",
		".#{name}":               ".#web-01",
		"hosts#{hostname}":       "hosts#web1.example.org",
		".#{name}-on-{hostname}": ".#web-01-on-web1.example.org",
	} {
		if got, err := renderFlake(tmpl, m); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", tmpl, got, err, want)
		}
	}
	for _, tmpl := range []string{".#-{name}", ".#.{name}", ".#" + strings.Repeat("x", 500) + "{hostname}"} {
		if got, err := renderFlake(tmpl, m); err == nil {
			t.Errorf("%s gave %q, want refused", tmpl, got)
		}
	}
}

func TestFleetRevisionChangesWithCommitAndTemplate(t *testing.T) {
	tmpl := nio.FleetTemplate{Flake: ".#web", ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://example.org/r.git"}}
	r1, _ := fleetRevision("a", tmpl)
	r2, _ := fleetRevision("b", tmpl)
	tmpl.OnRemoveFlake = ".#minimal"
	r3, _ := fleetRevision("a", tmpl)
	again, _ := fleetRevision("a", tmpl)
	if r1 == r2 || r1 == r3 || r3 != again || len(r1) != 10 {
		t.Errorf("revisions %s %s %s %s", r1, r2, r3, again)
	}
}

// child is a fleet configuration at generation 2, pinned to commit c.
func child(mutate func(c *nio.NixosConfiguration)) *nio.NixosConfiguration {
	c := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "web-web-01", Generation: 2}}
	c.Spec.Ref = "c"
	c.Status.ObservedGeneration = 2
	mutate(c)
	return c
}

func cond(typ string, status metav1.ConditionStatus, reason string, gen int64) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: "m", ObservedGeneration: gen}
}

func TestChildUpdatedAndFailed(t *testing.T) {
	applied := func(c *nio.NixosConfiguration) {
		c.Status.AppliedCommit, c.Status.AppliedSpecGeneration = "c", 2
		c.Status.Conditions = []metav1.Condition{cond(nio.ConditionReady, metav1.ConditionTrue, ReasonSucceeded, 2)}
	}
	failedApply := func(result nio.Result) func(c *nio.NixosConfiguration) {
		return func(c *nio.NixosConfiguration) {
			c.Status.AppliedCommit, c.Status.AppliedSpecGeneration = "old", 1
			c.Status.History = []nio.HistoryEntry{{Commit: "c", Action: "switch", Result: result, StartTime: metav1.NewTime(time.Now())}}
			c.Status.Conditions = []metav1.Condition{cond(nio.ConditionReady, metav1.ConditionFalse, ReasonApplyFailed, 2),
				cond(nio.ConditionApplied, metav1.ConditionFalse, ReasonApplyFailed, 2)}
		}
	}
	for _, tc := range []struct {
		name            string
		c               *nio.NixosConfiguration
		updated, failed bool
	}{
		{"applied at this generation and Ready", child(applied), true, false},
		{"applied an older generation", child(func(c *nio.NixosConfiguration) { applied(c); c.Status.AppliedSpecGeneration = 1 }), false, false},
		{"applied another commit", child(func(c *nio.NixosConfiguration) { applied(c); c.Status.AppliedCommit = "old" }), false, false},
		{"Ready from before the spec changed", child(func(c *nio.NixosConfiguration) {
			applied(c)
			c.Status.Conditions[0].ObservedGeneration = 1
		}), false, false},
		{"an operation in flight", child(func(c *nio.NixosConfiguration) {
			applied(c)
			c.Status.CurrentOperation = &nio.OperationRef{ID: "x", Commit: "c"}
		}), false, false},
		{"its build failed", child(failedApply(nio.ResultFailed)), false, true},
		{"its switch rolled back", child(failedApply(nio.ResultRolledBack)), false, true},
		{"failed, retrying now", child(func(c *nio.NixosConfiguration) {
			failedApply(nio.ResultFailed)(c)
			c.Status.CurrentOperation = &nio.OperationRef{ID: "y", Commit: "c"}
		}), false, false},
		{"a failure of its previous spec (same commit), the new spec not seen yet", child(func(c *nio.NixosConfiguration) {
			failedApply(nio.ResultFailed)(c)
			c.Status.ObservedGeneration = 1
		}), false, false},
		{"a failure of its previous spec, seen, not applied yet", child(func(c *nio.NixosConfiguration) {
			failedApply(nio.ResultFailed)(c)
			c.Status.Conditions[1].ObservedGeneration = 1
		}), false, false},
		{"a failed removal", child(func(c *nio.NixosConfiguration) {
			failedApply(nio.ResultFailed)(c)
			c.Status.History[0].Action = "remove"
		}), false, false},
		{"stalled on its spec", child(func(c *nio.NixosConfiguration) {
			c.Status.Conditions = []metav1.Condition{cond(nio.ConditionReady, metav1.ConditionFalse, ReasonInvalidConfig, 2),
				cond(nio.ConditionStalled, metav1.ConditionTrue, ReasonInvalidConfig, 2)}
		}), false, true},
		{"waiting for its Machine (another configuration holds it)", child(func(c *nio.NixosConfiguration) {
			c.Status.Conditions = []metav1.Condition{cond(nio.ConditionReady, metav1.ConditionFalse, ReasonMachineInUse, 2),
				cond(nio.ConditionStalled, metav1.ConditionTrue, ReasonMachineInUse, 2)}
		}), false, false},
		{"unreachable: retried, not failed", child(func(c *nio.NixosConfiguration) {
			c.Status.Conditions = []metav1.Condition{cond(nio.ConditionReady, metav1.ConditionFalse, ReasonHostUnreachable, 2)}
		}), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			failed, msg := childFailed(tc.c)
			if u := childUpdated(tc.c); u != tc.updated || failed != tc.failed {
				t.Errorf("updated %v failed %v (%q), want %v %v", u, failed, msg, tc.updated, tc.failed)
			}
			if failed && !strings.Contains(msg, ": m") {
				t.Errorf("message %q does not carry the configuration's", msg)
			}
		})
	}
}

func TestExpectationsHoldUntilTheCacheShowsTheWrites(t *testing.T) {
	var e childExpectations
	fleet := types.NamespacedName{Namespace: "ns", Name: "web"}
	now := time.Now()
	written := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "web-a", Generation: 3,
		Annotations: map[string]string{nio.FleetRevisionAnnotation: "r2", nio.FleetBatchAnnotation: "1"}}}
	e.expect(fleet, written, false, now)
	gone := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "web-b"}}
	e.expect(fleet, gone, true, now)

	stale := *written.DeepCopy()
	stale.Generation, stale.Annotations = 2, map[string]string{nio.FleetRevisionAnnotation: "r1"}
	if e.satisfied(fleet, []nio.NixosConfiguration{stale, *gone}, now) {
		t.Fatal("satisfied by a cache without the writes")
	}
	// The write shows (a status write since changed nothing of it), the deleted one
	// is being deleted.
	deleting := *gone.DeepCopy()
	deleting.DeletionTimestamp = &metav1.Time{Time: now}
	if !e.satisfied(fleet, []nio.NixosConfiguration{*written, deleting}, now) {
		t.Fatal("not satisfied by a cache that shows the writes")
	}
	// An expectation the cache never meets holds the fleet no longer than its TTL.
	e.expect(fleet, written, false, now)
	if e.satisfied(fleet, nil, now) || !e.satisfied(fleet, nil, now.Add(expectationTTL+time.Second)) {
		t.Error("the TTL does not release the fleet")
	}
}
