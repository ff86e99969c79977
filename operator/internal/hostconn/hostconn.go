// Package hostconn opens the real ways to a Machine for the controllers: nio-agent
// over mTLS first, OpenSSH when the agent can't be reached, behind the
// host.Host interface.
package hostconn

import (
	"context"
	"fmt"
	"path"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/install"
	"github.com/homystack/nio/operator/internal/pki"
	"github.com/homystack/nio/operator/internal/transport"
)

// Factory opens Hosts. It keeps one agent connection per Machine (a
// transport.AgentPool) across the Hosts it opens. A Host reads the Machine's SSH
// key Secret the first time it needs SSH, so a rotated key is used from the next
// pass on, and a Machine whose agent answers costs no Secret read.
type Factory struct {
	// Client reads Secrets.
	Client client.Client
	// Credentials are the operator's mTLS credentials for agents.
	Credentials *pki.OperatorCredentials
	// SSH holds defaults for every SSH connection (state and TLS directories, paths
	// of the system links); host, port, user and keys come from the Machine.
	SSH transport.SSHConfig
	// AgentDialTimeout bounds connecting to an agent (default 10s).
	AgentDialTimeout time.Duration
	// AgentIdleTimeout closes an agent connection unused this long, AgentMaxLifetime
	// one this old (defaults: transport.DefaultAgentIdleTimeout and
	// DefaultAgentMaxLifetime).
	AgentIdleTimeout, AgentMaxLifetime time.Duration

	poolOnce sync.Once
	pool     *transport.AgentPool
}

var _ host.Hosts = (*Factory)(nil)

func (f *Factory) agentPool() *transport.AgentPool {
	f.poolOnce.Do(func() {
		f.pool = &transport.AgentPool{IdleTimeout: f.AgentIdleTimeout, MaxLifetime: f.AgentMaxLifetime}
	})
	return f.pool
}

// AgentStats is how many TLS handshakes the agent connections made (and how many of
// them resumed a session), and how many connections are open now.
func (f *Factory) AgentStats() (handshakes, resumed int64, open int) {
	p := f.agentPool()
	handshakes, resumed = p.Handshakes()
	return handshakes, resumed, p.Len()
}

// Open returns the Host of Machine m. A Machine with the agent disabled has no agent
// way; one without sshKeySecretRef has no SSH way. Open reads nothing: a missing or
// unparsable SSH key shows where SSH is first needed.
func (f *Factory) Open(_ context.Context, m *nio.Machine) (host.Host, error) {
	h := &conn{}
	if m.Spec.Agent.Disabled {
		f.agentPool().Forget(m.Namespace, m.Name)
	} else {
		cfg := transport.AgentConfigFor(m, f.Credentials.RootCAs(), f.Credentials.GetClientCertificate)
		cfg.DialTimeout, cfg.Pool = f.AgentDialTimeout, f.agentPool()
		a, err := transport.NewAgent(cfg)
		if err != nil {
			return nil, fmt.Errorf("agent transport for Machine %s: %w", m.Name, err)
		}
		h.agent = a
		h.Fallback.Agent = a
	}
	if m.Spec.SSHKeySecretRef != nil {
		h.ssh = f.sshWay(m)
		h.Fallback.SSH = h.ssh
	}
	h.agentTLSDir = f.SSH.AgentTLSDir
	if h.agentTLSDir == "" {
		h.agentTLSDir = transport.DefaultAgentTLSDir
	}
	return h, nil
}

// Forget closes the agent connection of Machine key: it was deleted.
func (f *Factory) Forget(key types.NamespacedName) {
	f.agentPool().Forget(key.Namespace, key.Name)
}

// Close closes every agent connection (the operator stops).
func (f *Factory) Close() {
	f.agentPool().Close()
}

// conn is the fallback transport plus the SSH- and agent-only duties.
type conn struct {
	transport.Fallback
	agent       *transport.Agent
	ssh         *sshWay
	agentTLSDir string
}

// sshOnly is the SSH transport for a duty only SSH does.
func (h *conn) sshOnly(ctx context.Context, what string) (*transport.SSH, error) {
	if h.ssh == nil {
		return nil, fmt.Errorf("%s needs SSH, and the Machine has no sshKeySecretRef", what)
	}
	return h.ssh.get(ctx)
}

func (h *conn) AgentIdentityPresent(ctx context.Context) (bool, error) {
	s, err := h.sshOnly(ctx, "checking the agent's TLS identity")
	if err != nil {
		return false, err
	}
	return s.FileExists(ctx, path.Join(h.agentTLSDir, "tls.crt"))
}

func (h *conn) InstallAgentIdentity(ctx context.Context, caPEM, certPEM, keyPEM []byte) error {
	s, err := h.sshOnly(ctx, "delivering the agent's TLS identity")
	if err != nil {
		return err
	}
	if err := s.InstallAgentTLS(ctx, transport.AgentTLSFiles{CACert: caPEM, Cert: certPEM, Key: keyPEM}); err != nil {
		return err
	}
	return s.RestartAgent(ctx)
}

func (h *conn) RenewAgentCertificate(ctx context.Context, sign func([]byte) ([]byte, error)) (time.Time, error) {
	if h.agent == nil {
		return time.Time{}, fmt.Errorf("the Machine's agent is disabled")
	}
	return h.agent.RenewCertificate(ctx, sign)
}

func (h *conn) InstallMarkerPresent(ctx context.Context) (bool, error) {
	s, err := h.sshOnly(ctx, "checking the install marker")
	if err != nil {
		return false, err
	}
	return s.FileExists(ctx, install.MarkerPath)
}

// Close has nothing to release: the agent connection is the Factory's, and every
// SSH call dials its own.
func (h *conn) Close() error { return nil }
