package hostconn

import (
	"context"
	"fmt"
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/transport"
)

// sshWay is a Machine's SSH transport, built the first time a Host needs it: the
// key's Secret is an uncached API read, and while the agent answers and the host key
// is recorded nothing logs in over SSH (transport.Fallback.Probe). Its errors — a
// missing Secret or key (Stalling, SSHKeyMissing), an unparsable key (ErrConfig) —
// are those of every SSH call of the Host, as they were of Open before.
type sshWay struct {
	machine *nio.Machine
	// cfg is the SSH configuration but the key.
	cfg     transport.SSHConfig
	secrets client.Reader

	mu   sync.Mutex
	done bool
	ssh  *transport.SSH
	err  error
}

var _ transport.Transport = (*sshWay)(nil)

func (f *Factory) sshWay(m *nio.Machine) *sshWay {
	cfg := transport.SSHConfigFor(m, nil)
	cfg.StateDir, cfg.AgentTLSDir = f.SSH.StateDir, f.SSH.AgentTLSDir
	cfg.ProfilePath, cfg.CurrentSystemLink, cfg.BootedSystemLink = f.SSH.ProfilePath, f.SSH.CurrentSystemLink, f.SSH.BootedSystemLink
	cfg.DialTimeout = f.SSH.DialTimeout
	return &sshWay{machine: m.DeepCopy(), cfg: cfg, secrets: f.Client}
}

// get reads the key and builds the transport once per Host; a failure stays the
// Host's answer (the next pass opens a new Host and reads again).
func (w *sshWay) get(ctx context.Context) (*transport.SSH, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return w.ssh, w.err
	}
	w.done = true
	key, err := host.SSHKey(ctx, w.secrets, w.machine)
	if err != nil {
		w.err = err
		return nil, err
	}
	cfg := w.cfg
	cfg.PrivateKey = key
	s, err := transport.NewSSH(cfg)
	if err != nil {
		// An unparsable key in the Secret, or a malformed pinned or recorded host
		// key: the user's to fix, so the pass stalls instead of retrying.
		w.err = fmt.Errorf("ssh transport for Machine %s: %w: %w", w.machine.Name, outcome.ErrConfig, err)
		return nil, w.err
	}
	w.ssh = s
	return s, nil
}

// HostKeyRecorded needs no key: Fallback.Probe asks it before deciding to log in.
func (w *sshWay) HostKeyRecorded() bool { return w.cfg.HostKeyRecorded() }

func (w *sshWay) Apply(ctx context.Context, req transport.ApplyRequest) (transport.ApplyResult, error) {
	s, err := w.get(ctx)
	if err != nil {
		return transport.ApplyResult{Transport: nio.TransportSSH}, err
	}
	return s.Apply(ctx, req)
}

func (w *sshWay) Status(ctx context.Context) (transport.SystemStatus, error) {
	s, err := w.get(ctx)
	if err != nil {
		return transport.SystemStatus{}, err
	}
	return s.Status(ctx)
}

func (w *sshWay) Facts(ctx context.Context) ([]byte, error) {
	s, err := w.get(ctx)
	if err != nil {
		return nil, err
	}
	return s.Facts(ctx)
}

func (w *sshWay) Confirm(ctx context.Context, operationID string) error {
	s, err := w.get(ctx)
	if err != nil {
		return err
	}
	return s.Confirm(ctx, operationID)
}

// Probe reports a key that can't be read or parsed as the SSH error: the
// controller stalls on it as it did when Open failed.
func (w *sshWay) Probe(ctx context.Context) transport.ProbeResult {
	s, err := w.get(ctx)
	if err != nil {
		return transport.ProbeResult{SSHError: err}
	}
	return s.Probe(ctx)
}
