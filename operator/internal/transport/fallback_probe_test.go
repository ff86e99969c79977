package transport

import (
	"context"
	"errors"
	"testing"

	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/sshtest"
)

// TestProbeLogsInOverSSHOnlyWhenItTellsSomething: while the agent answers and the
// host key is recorded, probes never log in over SSH (at fleet scale, one login per
// Machine per probe interval); with no recorded key the probe logs in to record it,
// and with the agent down it logs in to tell whether SSH is the way.
func TestProbeLogsInOverSSHOnlyWhenItTellsSomething(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startSSHHost(t, sshtest.Options{})
	logins := countConnections(t, h.Addr()) // every SSH login is one connection
	agentHost := startAgent(t, certtest.NewCA(t), "web")
	agent := agentHost.agentTransport(t, "web", nil)
	viaCounter := func(recorded string) *SSH {
		return h.transport(t, func(c *SSHConfig) {
			c.Host, c.Port, c.HostKey, c.HostKeyFingerprint = "127.0.0.1", logins.port(), "", recorded
		})
	}

	recorded := &Fallback{Agent: agent, SSH: viaCounter(h.HostKeyFingerprint())}
	for range 3 {
		p := recorded.Probe(ctx)
		if !p.AgentReachable || !p.SSHSkipped || p.SSHReachable || p.SSHError != nil {
			t.Fatalf("probe with the agent up and the key recorded = %+v, want the agent and SSH skipped", p)
		}
	}
	if n := logins.accepted.Load(); n != 0 {
		t.Fatalf("%d SSH logins over 3 probes with the agent answering and the host key recorded, want 0", n)
	}

	first := &Fallback{Agent: agent, SSH: viaCounter("")}
	if p := first.Probe(ctx); !p.AgentReachable || p.SSHSkipped || !p.SSHReachable || p.SSHHostKeyFingerprint != h.HostKeyFingerprint() {
		t.Fatalf("probe with no host key recorded = %+v, want an SSH login reporting the key", p)
	}
	if n := logins.accepted.Load(); n != 1 {
		t.Fatalf("%d SSH logins to record the host key, want 1", n)
	}

	agentHost.kill()
	p := recorded.Probe(ctx)
	if p.AgentReachable || !errors.Is(p.AgentError, ErrUnreachable) || p.SSHSkipped || !p.SSHReachable {
		t.Fatalf("probe with the agent down = %+v, want SSH probed and reachable", p)
	}
	if n := logins.accepted.Load(); n != 2 {
		t.Fatalf("%d SSH logins after the agent went down, want 2", n)
	}
}
