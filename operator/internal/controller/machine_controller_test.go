package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/testkit/facterfixture"
)

// TestMachineStatusTellsTheTruth: the Machine controller records reachability, the
// agent, the running system, the first host key, and nixos-facter facts in a
// ConfigMap owned by the Machine; a rescan request takes a new report.
func TestMachineStatusTellsTheTruth(t *testing.T) {
	f := newFixture(t)
	report := facterfixture.Report
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	host.Set(func(h *hosttest.Host) {
		h.FactsReport, h.Current, h.Generation, h.AgentVersion = report, "/nix/store/abc-nixos-system-worker-01", 7, "0.1.0"
	})
	f.op = startOperator(t, f.ns, fleet, nil)

	eventually(t, 20*time.Second, "Machine observed", func() error {
		m := getMachine(t, f.ns, "worker-01")
		if !m.Status.Discoverable || m.Status.Agent == nil || !m.Status.Agent.Connected || m.Status.System == nil || m.Status.Facts == nil {
			return errorf("status %+v", m.Status)
		}
		return nil
	})
	m := getMachine(t, f.ns, "worker-01")
	st := m.Status
	if st.Agent.Version != "0.1.0" || st.Agent.LastSeenTime == nil || st.System.CurrentSystem != "/nix/store/abc-nixos-system-worker-01" ||
		st.System.Generation != 7 || st.SSHHostKeyFingerprint != "SHA256:fake-worker-01" || st.ObservedGeneration != m.Generation {
		t.Errorf("status = %+v", st)
	}
	for _, typ := range []string{nio.ConditionReady, nio.ConditionReachable, nio.ConditionAgentConnected} {
		if c := condition(st.Conditions, typ); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("%s = %+v, want True", typ, c)
		}
	}
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: st.Facts.ReportConfigMap}, cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data[FacterReportKey] != string(report) || len(cm.OwnerReferences) != 1 || cm.OwnerReferences[0].Name != "worker-01" {
		t.Errorf("facts ConfigMap: %d bytes, owners %+v", len(cm.Data[FacterReportKey]), cm.OwnerReferences)
	}
	if st.Facts.CPUs != 2 || st.Facts.Virtualisation != "kvm" {
		t.Errorf("facts summary = %+v", st.Facts)
	}
	scanned := st.LastHardwareScanTime

	// A rescan request takes a new report.
	time.Sleep(1100 * time.Millisecond) // status times have second precision
	patch := client.MergeFrom(m.DeepCopy())
	m.Annotations = map[string]string{nio.RescanAnnotation: "1"}
	if err := env.Client.Patch(context.Background(), m, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "rescan", func() error {
		m := getMachine(t, f.ns, "worker-01")
		if m.Status.LastHandledRescanAt != "1" || !m.Status.LastHardwareScanTime.After(scanned.Time) {
			return errorf("lastHandledRescanAt %q, scanned %v", m.Status.LastHandledRescanAt, m.Status.LastHardwareScanTime)
		}
		return nil
	})
}

// TestMachineHostKeyMismatchAndUnreachable: a changed host key is Reachable=False
// HostKeyMismatch (the recorded fingerprint kept) once SSH is probed (the agent
// down: while it answers, SSH is not logged into); a host that answers nothing is
// Reachable=False HostUnreachable.
func TestMachineHostKeyMismatchAndUnreachable(t *testing.T) {
	f := newFixture(t)
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	eventually(t, 20*time.Second, "fingerprint recorded", func() error {
		if fp := getMachine(t, f.ns, "worker-01").Status.SSHHostKeyFingerprint; fp != "SHA256:fake-worker-01" {
			return errorf("fingerprint %q", fp)
		}
		return nil
	})
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.SSHMismatch, h.AgentUp = true, false })
	eventually(t, 20*time.Second, "mismatch reported", func() error {
		m := getMachine(t, f.ns, "worker-01")
		c := condition(m.Status.Conditions, nio.ConditionReachable)
		if c == nil || c.Reason != ReasonHostKeyMismatch || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "sshHostKeyFingerprint") {
			return errorf("Reachable = %+v", c)
		}
		if m.Status.SSHHostKeyFingerprint != "SHA256:fake-worker-01" {
			return errorf("recorded fingerprint changed to %q", m.Status.SSHHostKeyFingerprint)
		}
		return nil
	})
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.SSHMismatch, h.AgentUp, h.SSHUp = false, false, false })
	eventually(t, 20*time.Second, "unreachable reported", func() error {
		m := getMachine(t, f.ns, "worker-01")
		c := condition(m.Status.Conditions, nio.ConditionReachable)
		if c == nil || c.Reason != ReasonHostUnreachable || m.Status.Discoverable {
			return errorf("Reachable = %+v, discoverable %v", c, m.Status.Discoverable)
		}
		return nil
	})
}

// TestMachineAgentIdentityDelivered: a NixOS host reachable over SSH whose agent has
// no TLS identity gets one, once.
func TestMachineAgentIdentityDelivered(t *testing.T) {
	f := newFixture(t)
	fleet := hosttest.NewFleet()
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.AgentUp = false })
	f.op = startOperator(t, f.ns, fleet, nil)
	eventually(t, 20*time.Second, "identity delivered", func() error {
		var n int
		fleet.Host("worker-01").Set(func(h *hosttest.Host) { n = h.Identities })
		if n != 1 {
			return errorf("%d deliveries", n)
		}
		return nil
	})
	time.Sleep(5 * time.Second) // two more probes
	var n int
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { n = h.Identities })
	if n != 1 {
		t.Errorf("identity delivered %d times, want once", n)
	}
	eventually(t, 10*time.Second, "AgentIdentityDelivered event", func() error {
		for _, e := range eventsOf(t, f.ns, "worker-01") {
			if e.Reason == "AgentIdentityDelivered" {
				return nil
			}
		}
		return errorf("events %+v", eventsOf(t, f.ns, "worker-01"))
	})
}

// TestMachineAgentIdentityCheckFailureIsReported: when the host can't be asked over
// SSH whether it holds the agent's identity, the Machine says so (AgentConnected's
// reason and message, a Warning event) instead of silently never delivering one.
func TestMachineAgentIdentityCheckFailureIsReported(t *testing.T) {
	f := newFixture(t)
	fleet := hosttest.NewFleet()
	fleet.Host("worker-01").Set(func(h *hosttest.Host) {
		h.AgentUp = false
		h.IdentityErr = errors.New("sudo -n test -s /var/lib/nio-agent/tls/tls.crt: permission denied")
	})
	f.op = startOperator(t, f.ns, fleet, nil)
	eventually(t, 20*time.Second, "identity check failure reported", func() error {
		m := getMachine(t, f.ns, "worker-01")
		c := condition(m.Status.Conditions, nio.ConditionAgentConnected)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonAgentIdentityFailed || !strings.Contains(c.Message, "permission denied") {
			return errorf("AgentConnected = %+v", c)
		}
		for _, e := range eventsOf(t, f.ns, "worker-01") {
			if e.Type == corev1.EventTypeWarning && e.Reason == ReasonAgentIdentityFailed && strings.Contains(e.Note, "permission denied") {
				return nil
			}
		}
		return errorf("no Warning %s event", ReasonAgentIdentityFailed)
	})
}
