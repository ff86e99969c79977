package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestMissingSSHKeySecretStallsUntilItAppears: a Machine naming an SSH key Secret
// that does not exist is a configuration error — Stalled with reason SSHKeyMissing,
// no retries while nothing changes — and creating the Secret brings the next pass
// (the probe interval plays no part: a stalled Machine is not requeued).
func TestMissingSSHKeySecretStallsUntilItAppears(t *testing.T) {
	f := newFixture(t)
	m := f.machine("worker-02")
	m.Spec.SSHKeySecretRef = &nio.SSHKeySecretReference{Name: "worker-02-ssh-key"}
	f.create(m)
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)

	eventually(t, 20*time.Second, "stalled on the missing Secret", func() error {
		m := getMachine(t, f.ns, "worker-02")
		stalled := condition(m.Status.Conditions, nio.ConditionStalled)
		ready := condition(m.Status.Conditions, nio.ConditionReady)
		if stalled == nil || stalled.Status != metav1.ConditionTrue || stalled.Reason != ReasonSSHKeyMissing ||
			ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != ReasonSSHKeyMissing ||
			!strings.Contains(ready.Message, "worker-02-ssh-key") {
			return errorf("Stalled %+v, Ready %+v", stalled, ready)
		}
		return nil
	})
	opens := fleet.OpenCount("worker-02")
	time.Sleep(3 * time.Second) // a transient error would be retried many times by now
	if n := fleet.OpenCount("worker-02") - opens; n > 1 {
		t.Errorf("%d more passes in 3s while the Secret is still missing, want none", n)
	}

	if err := env.Client.Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "worker-02-ssh-key", Namespace: f.ns},
		Data:       map[string][]byte{"ssh-privatekey": []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n")},
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "ready once the Secret exists", func() error {
		m := getMachine(t, f.ns, "worker-02")
		if ready := condition(m.Status.Conditions, nio.ConditionReady); ready == nil || ready.Status != metav1.ConditionTrue {
			return errorf("Ready %+v", ready)
		}
		if c := condition(m.Status.Conditions, nio.ConditionStalled); c != nil {
			return errorf("Stalled still present: %+v", c)
		}
		return nil
	})
}

// TestMissingSSHKeySecretShowsOnceSSHIsNeeded: the SSH key Secret is read only when
// SSH is needed. A Machine whose agent answers and whose host key is pinned is
// Ready without it (probes do not log in over SSH); once the agent stops
// answering, the probe needs SSH and the Machine stalls on the missing Secret, with
// Reachable Unknown: SSH could not be tried.
func TestMissingSSHKeySecretShowsOnceSSHIsNeeded(t *testing.T) {
	f := newFixture(t)
	m := f.machine("worker-03")
	m.Spec.SSHKeySecretRef = &nio.SSHKeySecretReference{Name: "worker-03-ssh-key"}
	m.Spec.SSHHostKey = hosttest.InstalledHostKey
	f.create(m)
	fleet := hosttest.NewFleet()
	host := fleet.Host("worker-03")
	f.op = startOperator(t, f.ns, fleet, nil)

	eventually(t, 20*time.Second, "Ready over the agent without the Secret", func() error {
		m := getMachine(t, f.ns, "worker-03")
		ready, reachable := condition(m.Status.Conditions, nio.ConditionReady), condition(m.Status.Conditions, nio.ConditionReachable)
		if ready == nil || ready.Status != metav1.ConditionTrue || reachable == nil || !strings.Contains(reachable.Message, "SSH not probed") {
			return errorf("Ready %+v, Reachable %+v", ready, reachable)
		}
		return nil
	})

	host.Set(func(h *hosttest.Host) { h.AgentUp = false })
	eventually(t, 20*time.Second, "stalled on the missing Secret once SSH is needed", func() error {
		m := getMachine(t, f.ns, "worker-03")
		stalled, reachable := condition(m.Status.Conditions, nio.ConditionStalled), condition(m.Status.Conditions, nio.ConditionReachable)
		if stalled == nil || stalled.Status != metav1.ConditionTrue || stalled.Reason != ReasonSSHKeyMissing ||
			!strings.Contains(stalled.Message, "worker-03-ssh-key") ||
			reachable == nil || reachable.Status != metav1.ConditionUnknown || reachable.Reason != ReasonSSHKeyMissing {
			return errorf("Stalled %+v, Reachable %+v", stalled, reachable)
		}
		return nil
	})
}
