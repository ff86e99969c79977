package controller

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestSecondConfigurationIsMachineInUse: one configuration per Machine; the second
// never applies, and takes over when the first is deleted.
func TestSecondConfigurationIsMachineInUse(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01"))
	f.waitApplied("worker-config", "worker-01", first)
	f.create(f.config("intruder", "worker-01", func(c *nio.NixosConfiguration) { c.Spec.Flake = ".#other" }))

	eventually(t, 20*time.Second, "intruder stalled", func() error {
		c := getConfig(t, f.ns, "intruder")
		ready := condition(c.Status.Conditions, nio.ConditionReady)
		stalled := condition(c.Status.Conditions, nio.ConditionStalled)
		if ready == nil || ready.Reason != ReasonMachineInUse || ready.Status != metav1.ConditionFalse || stalled == nil {
			return errorf("conditions %+v", c.Status.Conditions)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	for _, op := range fleet.Host("worker-01").Ops() {
		if op.Target.FlakeAttr != "worker" {
			t.Fatalf("the second configuration applied: %+v", op)
		}
	}
	if m := getMachine(t, f.ns, "worker-01"); m.Status.AppliedConfiguration != "worker-config" {
		t.Errorf("Machine runs %q", m.Status.AppliedConfiguration)
	}

	// The owner goes; the next in line takes over by itself.
	if err := env.Client.Delete(t.Context(), getConfig(t, f.ns, "worker-config")); err != nil {
		t.Fatal(err)
	}
	f.waitApplied("intruder", "worker-01", first)
	if m := getMachine(t, f.ns, "worker-01"); m.Status.AppliedConfiguration != "intruder" {
		t.Errorf("Machine runs %q after the takeover", m.Status.AppliedConfiguration)
	}
}
