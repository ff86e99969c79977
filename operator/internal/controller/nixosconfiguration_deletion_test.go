package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

func withRemoval(flake string) func(*nio.NixosConfiguration) {
	return func(c *nio.NixosConfiguration) { c.Spec.OnRemoveFlake = flake }
}

func gone(t *testing.T, ns, name string) func() error {
	return func() error {
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &nio.NixosConfiguration{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return errorf("still there (err %v)", err)
	}
}

// TestDeletionAppliesRemovalFlake: deleting a configuration with onRemoveFlake
// switches the host to it, clears the Machine's configuration fields, and lets the
// object go. A module path is switched as a module file.
func TestDeletionAppliesRemovalFlake(t *testing.T) {
	for _, tc := range []struct {
		onRemove string
		check    func(op hosttest.AppliedOp) bool
	}{
		{".#minimal", func(op hosttest.AppliedOp) bool { return op.Target.FlakeAttr == "minimal" && op.Target.FlakeDir == "." }},
		{"hosts/minimal.nix", func(op hosttest.AppliedOp) bool { return op.Target.ModuleFile == "hosts/minimal.nix" }},
	} {
		t.Run(strings.ReplaceAll(tc.onRemove, "/", "_"), func(t *testing.T) {
			f := newFixture(t)
			first := f.commit("1")
			fleet := hosttest.NewFleet()
			f.op = startOperator(t, f.ns, fleet, nil)
			f.create(f.config("worker-config", "worker-01", withRemoval(tc.onRemove)))
			f.waitApplied("worker-config", "worker-01", first)

			if err := env.Client.Delete(context.Background(), getConfig(t, f.ns, "worker-config")); err != nil {
				t.Fatal(err)
			}
			eventually(t, 20*time.Second, "configuration gone", gone(t, f.ns, "worker-config"))
			ops := fleet.Host("worker-01").Ops()
			last := ops[len(ops)-1]
			if len(ops) != 2 || !tc.check(last) || last.Action != "switch" {
				t.Fatalf("host saw %+v, want the apply then a switch to %s", ops, tc.onRemove)
			}
			m := getMachine(t, f.ns, "worker-01")
			if m.Status.HasConfiguration || m.Status.AppliedConfiguration != "" || m.Status.AppliedCommit != "" || m.Status.LastAppliedTime != nil {
				t.Errorf("Machine status not cleared: %+v", m.Status)
			}
		})
	}
}

// TestDeletionWaitsForUnreachableHost: an unreachable host keeps the finalizer with
// a condition saying why, until skip-removal lets the object go.
func TestDeletionWaitsForUnreachableHost(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", withRemoval(".#minimal")))
	f.waitApplied("worker-config", "worker-01", first)

	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp, h.SSHUp = false, false })
	ctx := context.Background()
	if err := env.Client.Delete(ctx, getConfig(t, f.ns, "worker-config")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "condition says why", func() error {
		c := getConfig(t, f.ns, "worker-config")
		ready := condition(c.Status.Conditions, nio.ConditionReady)
		if ready == nil || ready.Reason != ReasonHostUnreachable || !strings.Contains(ready.Message, nio.SkipRemovalAnnotation) {
			return errorf("Ready = %+v", ready)
		}
		return nil
	})
	time.Sleep(time.Second)
	if getConfig(t, f.ns, "worker-config").DeletionTimestamp.IsZero() {
		t.Fatal("not being deleted")
	}

	c := getConfig(t, f.ns, "worker-config")
	patch := client.MergeFrom(c.DeepCopy())
	c.Annotations = map[string]string{nio.SkipRemovalAnnotation: "true"}
	if err := env.Client.Patch(ctx, c, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "configuration let go", gone(t, f.ns, "worker-config"))
	if ops := fleet.Host("worker-01").Ops(); len(ops) != 1 {
		t.Errorf("host saw %d operations, want only the first apply", len(ops))
	}
	if m := getMachine(t, f.ns, "worker-01"); m.Status.HasConfiguration || m.Status.AppliedConfiguration != "" {
		t.Errorf("Machine status not cleared: %+v", m.Status)
	}
}
