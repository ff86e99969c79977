package controller

import (
	"errors"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestFailingInstallBacksOffAcrossRestarts: a failing nixos-anywhere run (each one
// kexecs the host and may wipe it) is retried with a doubling delay, not every
// interval (1s here), and an operator restart keeps the delay: it is read from the
// status history.
func TestFailingInstallBacksOffAcrossRestarts(t *testing.T) {
	f := newFixture(t)
	f.commit("1")
	fleet := hosttest.NewFleet()
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp = false })
	installer := &hosttest.Installer{Fleet: fleet, Fail: errors.New("kexec_load failed: Operation not permitted")}
	f.op = startOperator(t, f.ns, fleet, installer) // RetryBase 2s: waits 2s, 4s, 8s, ...
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) { c.Spec.FullInstall = true }))

	eventually(t, 30*time.Second, "three failed installs", func() error {
		if n := installer.Count(); n < 3 {
			return errorf("%d runs", n)
		}
		return nil
	})
	at := installer.Times()
	if gap1, gap2 := at[1].Sub(at[0]), at[2].Sub(at[1]); gap1 < 1800*time.Millisecond || gap2 < 3600*time.Millisecond {
		t.Fatalf("install retried after %v then %v, want at least 2s then 4s", gap1, gap2)
	}
	// The installer counts a run before the operator records its failure: wait for
	// the third entry rather than read the history at once (a race seen in CI).
	eventually(t, 10*time.Second, "three failed installs in the history", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if len(c.Status.History) < 3 {
			return errorf("history = %+v", c.Status.History)
		}
		for _, h := range c.Status.History[:3] {
			if h.Result != nio.ResultFailed || h.Transport != nio.TransportInstall {
				return errorf("history = %+v, want the failed installs", c.Status.History)
			}
		}
		return nil
	})

	// The next try is due 8s after the third: a restarted operator must wait too.
	f.op.stop()
	f.op = startOperator(t, f.ns, fleet, installer)
	runs := installer.Count()
	time.Sleep(5 * time.Second)
	if n := installer.Count(); n != runs {
		t.Fatalf("a restarted operator ran the failing install %d more times within 5s, want none before the 8s backoff ends", n-runs)
	}
	eventually(t, 20*time.Second, "the fourth attempt", func() error {
		if n := installer.Count(); n <= runs {
			return errorf("%d runs", n)
		}
		return nil
	})
	if gap := installer.Times()[runs].Sub(at[2]); gap < 7*time.Second {
		t.Errorf("fourth attempt %v after the third, want the 8s backoff", gap)
	}
}

// TestBackoffDoublesUpToItsCap pins the delay sequence and its cap.
func TestBackoffDoublesUpToItsCap(t *testing.T) {
	for failures, want := range map[int]time.Duration{
		1: 30 * time.Second, 2: time.Minute, 3: 2 * time.Minute, 8: 60 * time.Minute, 9: time.Hour, 30: time.Hour,
	} {
		if got := backoff(failures, 30*time.Second, time.Hour); got != want {
			t.Errorf("backoff(%d) = %v, want %v", failures, got, want)
		}
	}
}
