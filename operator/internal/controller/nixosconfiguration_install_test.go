package controller

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestFullInstallRunsOnce: nixos-anywhere runs once across a push, an operator
// restart and a re-created configuration (the host's marker says it is installed);
// the reinstall annotation allows one more.
func TestFullInstallRunsOnce(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	// A fresh host: no agent yet, SSH into the installer image.
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp = false })
	installer := &hosttest.Installer{Fleet: fleet}
	f.op = startOperator(t, f.ns, fleet, installer)
	full := func(c *nio.NixosConfiguration) { c.Spec.FullInstall = true }
	f.create(f.config("worker-config", "worker-01", full))
	f.waitApplied("worker-config", "worker-01", first)

	if n := installer.Count(); n != 1 {
		t.Fatalf("installer ran %d times, want 1", n)
	}
	run := installer.Runs()[0]
	if run.FlakeAttr != "worker" || run.Commit != first || run.Host != "192.168.1.100" || run.Port != 22 || run.User != "root" ||
		len(run.SSHPrivateKey) == 0 || len(run.AgentTLS.Cert) == 0 || len(run.AgentTLS.Key) == 0 {
		t.Errorf("install request = %+v", run)
	}
	c := getConfig(t, f.ns, "worker-config")
	if !c.Status.FullInstallCompleted || c.Status.InstalledTime == nil || c.Status.History[0].Transport != nio.TransportInstall {
		t.Errorf("status after install = %+v", c.Status)
	}
	if cond := condition(c.Status.Conditions, nio.ConditionInstalled); cond == nil || cond.Status != metav1.ConditionTrue {
		t.Errorf("Installed = %+v", cond)
	}
	// The Machine trusts the host key generated for the new system, not the one the
	// installer image showed on first contact.
	want, err := hostKeyFingerprint(hosttest.InstalledHostKey)
	if err != nil || c.Status.InstalledHostKeyFingerprint != want {
		t.Fatalf("installedHostKeyFingerprint = %q, want %q (%v)", c.Status.InstalledHostKeyFingerprint, want, err)
	}
	eventually(t, 20*time.Second, "the generated host key's fingerprint recorded", func() error {
		if fp := getMachine(t, f.ns, "worker-01").Status.SSHHostKeyFingerprint; fp != want {
			return errorf("Machine fingerprint %q, want %q", fp, want)
		}
		return nil
	})

	// The installed system runs the agent; a push is a day-two switch.
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp = true })
	second := f.commit("2")
	f.waitApplied("worker-config", "worker-01", second)

	// An operator restart.
	f.op.stop()
	f.op = startOperator(t, f.ns, fleet, installer)
	third := f.commit("3")
	f.waitApplied("worker-config", "worker-01", third)

	// A re-created configuration: its status is empty, the host still says installed.
	ctx := context.Background()
	if err := env.Client.Delete(ctx, getConfig(t, f.ns, "worker-config")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "configuration gone", func() error {
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: "worker-config"}, &nio.NixosConfiguration{}); err == nil {
			return errorf("still there")
		}
		return nil
	})
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp = false }) // only the marker can tell
	f.create(f.config("worker-config", "worker-01", full))
	eventually(t, 20*time.Second, "re-created configuration sees the install", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if cond := condition(c.Status.Conditions, nio.ConditionInstalled); cond == nil || cond.Reason != ReasonAlreadyInstalled {
			return errorf("Installed = %+v", cond)
		}
		return nil
	})
	if n := installer.Count(); n != 1 {
		t.Fatalf("installer ran %d times across push, restart and re-creation, want 1", n)
	}

	// The reinstall annotation allows exactly one more.
	c = getConfig(t, f.ns, "worker-config")
	patch := client.MergeFrom(c.DeepCopy())
	c.Annotations = map[string]string{nio.ReinstallAnnotation: "2026-11-28T00:00:00Z"}
	if err := env.Client.Patch(ctx, c, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "reinstall", func() error {
		if n := installer.Count(); n != 2 {
			return errorf("installer ran %d times", n)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	if n := installer.Count(); n != 2 {
		t.Fatalf("installer ran %d times after one reinstall request, want 2", n)
	}
}
