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
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/pki"
	"github.com/homystack/nio/operator/internal/transport"
)

// Factory opens Hosts. It keeps one agent connection per Machine (a
// transport.AgentPool) across the Hosts it opens. It reads each Machine's SSH key
// Secret when a Host is opened, so a rotated key is used from the next pass on.
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

// Open returns the Host of Machine m. A Machine with the agent disabled has no agent
// way; one without sshKeySecretRef has no SSH way.
func (f *Factory) Open(ctx context.Context, m *nio.Machine) (host.Host, error) {
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
	}
	if m.Spec.SSHKeySecretRef != nil {
		key, err := host.SSHKey(ctx, f.Client, m)
		if err != nil {
			return nil, err
		}
		cfg := transport.SSHConfigFor(m, key)
		cfg.StateDir, cfg.AgentTLSDir = f.SSH.StateDir, f.SSH.AgentTLSDir
		cfg.ProfilePath, cfg.CurrentSystemLink, cfg.BootedSystemLink = f.SSH.ProfilePath, f.SSH.CurrentSystemLink, f.SSH.BootedSystemLink
		cfg.DialTimeout = f.SSH.DialTimeout
		s, err := transport.NewSSH(cfg)
		if err != nil {
			// An unparsable key in the Secret, or a malformed pinned or recorded host
			// key: the user's to fix, so the pass stalls instead of retrying.
			return nil, fmt.Errorf("ssh transport for Machine %s: %w: %w", m.Name, outcome.ErrConfig, err)
		}
		h.ssh = s
	}
	h.Fallback = transport.Fallback{}
	if h.agent != nil {
		h.Fallback.Agent = h.agent
	}
	if h.ssh != nil {
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
	ssh         *transport.SSH
	agentTLSDir string
}

func (h *conn) needSSH(what string) error {
	if h.ssh == nil {
		return fmt.Errorf("%s needs SSH, and the Machine has no sshKeySecretRef", what)
	}
	return nil
}

func (h *conn) AgentIdentityPresent(ctx context.Context) (bool, error) {
	if err := h.needSSH("checking the agent's TLS identity"); err != nil {
		return false, err
	}
	return h.ssh.FileExists(ctx, path.Join(h.agentTLSDir, "tls.crt"))
}

func (h *conn) InstallAgentIdentity(ctx context.Context, caPEM, certPEM, keyPEM []byte) error {
	if err := h.needSSH("delivering the agent's TLS identity"); err != nil {
		return err
	}
	if err := h.ssh.InstallAgentTLS(ctx, transport.AgentTLSFiles{CACert: caPEM, Cert: certPEM, Key: keyPEM}); err != nil {
		return err
	}
	return h.ssh.RestartAgent(ctx)
}

func (h *conn) RenewAgentCertificate(ctx context.Context, sign func([]byte) ([]byte, error)) (time.Time, error) {
	if h.agent == nil {
		return time.Time{}, fmt.Errorf("the Machine's agent is disabled")
	}
	return h.agent.RenewCertificate(ctx, sign)
}

func (h *conn) InstallMarkerPresent(ctx context.Context) (bool, error) {
	if err := h.needSSH("checking the install marker"); err != nil {
		return false, err
	}
	return h.ssh.FileExists(ctx, install.MarkerPath)
}

// Close has nothing to release: the agent connection is the Factory's, and every
// SSH call dials its own.
func (h *conn) Close() error { return nil }
