// Package host is the seam between the controllers and the hosts they act on: the
// Host interface (agent first, SSH when the agent can't be reached, and the duties
// only one of them can do), the Hosts that open one per Machine, and the Machine's
// SSH key they are opened with. hostconn implements it with the real transports;
// hosttest is the recording stand-in the controller tests drive.
package host

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/transport"
)

// Host is every way the controllers act on one Machine. The fallback transport
// (agent first, SSH when the agent can't be reached) is embedded; the rest are the
// SSH- or agent-only duties of the Machine controller.
type Host interface {
	transport.Transport
	// GenerationActivator activates an earlier generation (a rollback), through
	// the agent only (transport.Fallback.ActivateGeneration).
	transport.GenerationActivator
	// AgentIdentityPresent tells, over SSH, whether the host holds an agent TLS
	// identity issued for this Machine.
	AgentIdentityPresent(ctx context.Context) (bool, error)
	// InstallAgentIdentity writes the agent's TLS files over SSH (0600, root) and
	// restarts the agent.
	InstallAgentIdentity(ctx context.Context, caPEM, certPEM, keyPEM []byte) error
	// RenewAgentCertificate has the agent make a new key and CSR, signs it with sign,
	// and returns the new certificate's expiry.
	RenewAgentCertificate(ctx context.Context, sign func(csrPEM []byte) ([]byte, error)) (time.Time, error)
	// InstallMarkerPresent tells, over SSH, whether /var/lib/nio/installed exists.
	InstallMarkerPresent(ctx context.Context) (bool, error)
	// Close releases connections.
	Close() error
}

// Hosts opens Hosts for Machines. The real one keeps one agent connection per
// Machine, uses the operator's client certificate, and reads the Machine's SSH key
// Secret when a Host first needs SSH; tests use a recording stand-in.
type Hosts interface {
	Open(ctx context.Context, m *nio.Machine) (Host, error)
	// Forget releases what is kept for Machine m (its agent connection): it was
	// deleted.
	Forget(m types.NamespacedName)
}

// ReasonSSHKeyMissing is the condition reason of a Machine whose SSH key can't be read.
const ReasonSSHKeyMissing = "SSHKeyMissing"

// SSHKey reads the Machine's SSH private key from its Secret. A missing reference,
// Secret or key stalls (reason SSHKeyMissing): the user's to fix.
func SSHKey(ctx context.Context, c client.Reader, m *nio.Machine) ([]byte, error) {
	ref := m.Spec.SSHKeySecretRef
	if ref == nil {
		return nil, outcome.Stalled(ReasonSSHKeyMissing, "Machine %s has no sshKeySecretRef", m.Name)
	}
	key := ref.Key
	if key == "" {
		key = "ssh-privatekey"
	}
	s := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: ref.Name}, s); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil, outcome.Stalled(ReasonSSHKeyMissing, "Secret %s (Machine %s's SSH key) not found", ref.Name, m.Name)
		}
		return nil, fmt.Errorf("get Secret %s: %w", ref.Name, err)
	}
	v, ok := s.Data[key]
	if !ok || len(v) == 0 {
		return nil, outcome.Stalled(ReasonSSHKeyMissing, "Secret %s has no key %q (Machine %s's SSH key)", ref.Name, key, m.Name)
	}
	return v, nil
}
