package controller

import (
	"context"
	"testing"
	"time"

	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestDeletedMachineIsForgotten: the Hosts let go of a deleted Machine (the real
// ones close its agent connection).
func TestDeletedMachineIsForgotten(t *testing.T) {
	f := newFixture(t)
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	eventually(t, 20*time.Second, "probed", func() error {
		if n := fleet.OpenCount("worker-01"); n == 0 {
			return errorf("not opened yet")
		}
		return nil
	})
	if err := env.Client.Delete(context.Background(), getMachine(t, f.ns, "worker-01")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "forgotten", func() error {
		if n := fleet.ForgetCount("worker-01"); n == 0 {
			return errorf("Forget not called")
		}
		return nil
	})
}
