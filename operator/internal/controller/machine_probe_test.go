package controller

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestMachineProbesNoSSHWhileTheAgentAnswers: once the host key is recorded, probes
// of a host whose agent answers never log in over SSH (Reachable says the agent
// answered and SSH was not probed); when the agent stops answering, the probe logs
// in over SSH and Reachable says SSH answered.
func TestMachineProbesNoSSHWhileTheAgentAnswers(t *testing.T) {
	f := newFixture(t)
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-01")
	f.op = startOperator(t, f.ns, fleet, nil)
	sshProbes := func() (n int) {
		host.Set(func(h *hosttest.Host) { n = h.SSHProbes })
		return n
	}
	eventually(t, 20*time.Second, "fingerprint recorded", func() error {
		if fp := getMachine(t, f.ns, "worker-01").Status.SSHHostKeyFingerprint; fp != "SHA256:fake-worker-01" {
			return errorf("fingerprint %q", fp)
		}
		return nil
	})
	if n := sshProbes(); n != 1 {
		t.Errorf("%d SSH logins to record the host key, want 1", n)
	}
	eventually(t, 20*time.Second, "Reachable over the agent alone", func() error {
		c := condition(getMachine(t, f.ns, "worker-01").Status.Conditions, nio.ConditionReachable)
		if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "SSH not probed") {
			return errorf("Reachable = %+v", c)
		}
		return nil
	})
	before := sshProbes()
	time.Sleep(5 * time.Second) // two more probes (every 2s here)
	if n := sshProbes() - before; n != 0 {
		t.Errorf("%d SSH logins while the agent answers and the host key is recorded, want 0", n)
	}

	host.Set(func(h *hosttest.Host) { h.AgentUp = false })
	eventually(t, 20*time.Second, "Reachable over SSH", func() error {
		m := getMachine(t, f.ns, "worker-01")
		c := condition(m.Status.Conditions, nio.ConditionReachable)
		if c == nil || c.Status != metav1.ConditionTrue || c.Message != "reachable over SSH" || !m.Status.Discoverable {
			return errorf("Reachable = %+v", c)
		}
		return nil
	})
	if sshProbes() == before {
		t.Error("no SSH login once the agent stopped answering")
	}
}
