package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// passes is how many NixosConfiguration passes the operator ran.
func (o *operator) passes(t *testing.T) uint64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(o.metrics.ReconcileDuration)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == "NixosConfiguration" {
					n += m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return n
}

// TestProbeHeartbeatRunsNoPassButDriftReapplies: the Machine controller probes every
// Machine each interval, and every answer moves status.agent.lastSeenTime. That
// alone must not run the configuration's pass (at 1000 Machines it ran a full pass,
// ls-remote and Secret reads included, per Machine per minute). A probe that finds
// another system running must still run one, and it re-applies (drift).
func TestProbeHeartbeatRunsNoPassButDriftReapplies(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	// An interval longer than the test: every pass it sees was brought by an event.
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) {
		c.Spec.Interval = metav1.Duration{Duration: time.Hour}
	}))
	f.waitApplied("worker-config", "worker-01", first)
	host := fleet.Host("worker-01")

	// The Machine's probe right after the apply records the new system, and the
	// first answer seen after the apply matters (drift is judged on it only): let it
	// land, then count.
	time.Sleep(3 * time.Second)
	ctx := context.Background()
	heartbeat := func(i int) {
		m := getMachine(t, f.ns, "worker-01")
		patch := client.MergeFrom(m.DeepCopy())
		m.Status.Agent.LastSeenTime = &metav1.Time{Time: time.Now().Add(time.Duration(i+1) * time.Minute)}
		if err := env.Client.Status().Patch(ctx, m, patch); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	heartbeat(0)
	time.Sleep(2 * time.Second)
	before := f.op.passes(t)
	for i := range 5 {
		heartbeat(i + 1)
	}
	// The operator's own probes (every 2s here) go on meanwhile.
	time.Sleep(4 * time.Second)
	if extra := f.op.passes(t) - before; extra != 0 {
		t.Errorf("%d configuration passes while only lastSeenTime moved, want 0", extra)
	}
	if n := len(host.Ops()); n != 1 {
		t.Fatalf("host saw %d applies before the drift, want 1", n)
	}

	// Someone switches the host to another system by hand.
	host.Set(func(h *hosttest.Host) { h.Current = "/nix/store/hand-made-nixos-system" })
	eventually(t, 30*time.Second, "drift re-applied", func() error {
		if n := len(host.Ops()); n != 2 {
			return fmt.Errorf("host saw %d applies, want 2", n)
		}
		return nil
	})
	if ops := host.Ops(); ops[1].Commit != first {
		t.Errorf("drift applied commit %s, want the same commit %s", ops[1].Commit, first)
	}
	// The pass is counted when it ends, after the host's Apply returned.
	eventually(t, 10*time.Second, "the drift's pass counted", func() error {
		if f.op.passes(t) == before {
			return fmt.Errorf("no pass recorded for the drift")
		}
		return nil
	})
}
