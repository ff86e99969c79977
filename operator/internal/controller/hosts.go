package controller

import (
	"context"
	"errors"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/transport"
)

// Host is every way the controllers act on one Machine. The fallback transport
// (agent first, SSH when the agent can't be reached) is embedded; the rest are the
// SSH- or agent-only duties of the Machine controller.
type Host interface {
	transport.Transport
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

// Hosts opens Hosts for Machines. The real one reads the Machine's SSH key Secret and
// uses the operator's client certificate; tests use a recording stand-in.
type Hosts interface {
	Open(ctx context.Context, m *nio.Machine) (Host, error)
}

// ErrConfig marks an error the user must fix (a missing Secret key, an invalid
// reference): retrying without a change does not help, so it stalls the object.
var ErrConfig = errors.New("configuration error")

// configError wraps err as a configuration error.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() []error {
	return []error{e.err, ErrConfig}
}

// asConfigError marks err as a configuration error.
func asConfigError(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

// HostLocks serialises operations on a Machine across controllers: an apply, an
// install, a removal and the delivery of the agent's identity never overlap.
type HostLocks struct {
	mu   sync.Mutex
	held map[types.NamespacedName]string
}

// TryLock takes the Machine's lock for holder, or reports who holds it.
func (l *HostLocks) TryLock(m types.NamespacedName, holder string) (unlock func(), heldBy string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[types.NamespacedName]string{}
	}
	if h, busy := l.held[m]; busy {
		return nil, h, false
	}
	l.held[m] = holder
	return func() {
		l.mu.Lock()
		delete(l.held, m)
		l.mu.Unlock()
	}, "", true
}

// ClientOptions are the manager's client options: Secrets and ConfigMaps are read
// from the API server, never cached. No Secret data sits in the operator's memory,
// and neither do the nixos-facter reports (50–500 KB each, read once per render).
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.ConfigMap{}}}}
}
