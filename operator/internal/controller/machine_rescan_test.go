package controller

import (
	"context"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/testkit/facterfixture"
)

// TestRescanRequestSurvivesAFailedScan: a rescan whose nixos-facter run fails stays
// pending (lastHandledRescanAt unchanged) and is retried, instead of being recorded
// as handled with no new report.
func TestRescanRequestSurvivesAFailedScan(t *testing.T) {
	f := newFixture(t)
	report := facterfixture.Report
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	host.Set(func(h *hosttest.Host) { h.FactsReport = report })
	f.op = startOperator(t, f.ns, fleet, nil)
	eventually(t, 20*time.Second, "first scan", func() error {
		if getMachine(t, f.ns, "worker-01").Status.LastHardwareScanTime == nil {
			return errorf("not scanned")
		}
		return nil
	})
	m := getMachine(t, f.ns, "worker-01")
	scanned := m.Status.LastHardwareScanTime

	time.Sleep(1100 * time.Millisecond) // status times have second precision
	host.Set(func(h *hosttest.Host) { h.FactsFails = 1 })
	patch := client.MergeFrom(m.DeepCopy())
	m.Annotations = map[string]string{nio.RescanAnnotation: "1"}
	if err := env.Client.Patch(context.Background(), m, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the failed scan", func() error {
		var left int
		host.Set(func(h *hosttest.Host) { left = h.FactsFails })
		if left != 0 {
			return errorf("nixos-facter not run yet")
		}
		return nil
	})
	// The failed pass has written its status by now; the retry waits FactsRetry (3s).
	time.Sleep(time.Second)
	if got := getMachine(t, f.ns, "worker-01").Status.LastHandledRescanAt; got == "1" {
		t.Fatalf("the failed rescan was recorded as handled without a new report")
	}
	eventually(t, 20*time.Second, "the retried rescan", func() error {
		m := getMachine(t, f.ns, "worker-01")
		if m.Status.LastHandledRescanAt != "1" || !m.Status.LastHardwareScanTime.After(scanned.Time) {
			return errorf("lastHandledRescanAt %q, scanned %v (first %v)", m.Status.LastHandledRescanAt, m.Status.LastHardwareScanTime, scanned)
		}
		return nil
	})
}
