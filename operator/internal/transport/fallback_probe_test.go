package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/sshtest"
)

// loginCounter forwards TCP connections to an sshd and counts them: every SSH login
// is one connection.
type loginCounter struct {
	ln    net.Listener
	count atomic.Int32
}

func countLogins(t *testing.T, target string) *loginCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	l := &loginCounter{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.count.Add(1)
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				// Either side ending ends both.
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(s, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, s); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return l
}

func (l *loginCounter) port() int { return l.ln.Addr().(*net.TCPAddr).Port }

// TestProbeLogsInOverSSHOnlyWhenItTellsSomething: while the agent answers and the
// host key is recorded, probes never log in over SSH (at fleet scale, one login per
// Machine per probe interval); with no recorded key the probe logs in to record it,
// and with the agent down it logs in to tell whether SSH is the way.
func TestProbeLogsInOverSSHOnlyWhenItTellsSomething(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startSSHHost(t, sshtest.Options{})
	logins := countLogins(t, h.Addr())
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
	if n := logins.count.Load(); n != 0 {
		t.Fatalf("%d SSH logins over 3 probes with the agent answering and the host key recorded, want 0", n)
	}

	first := &Fallback{Agent: agent, SSH: viaCounter("")}
	if p := first.Probe(ctx); !p.AgentReachable || p.SSHSkipped || !p.SSHReachable || p.SSHHostKeyFingerprint != h.HostKeyFingerprint() {
		t.Fatalf("probe with no host key recorded = %+v, want an SSH login reporting the key", p)
	}
	if n := logins.count.Load(); n != 1 {
		t.Fatalf("%d SSH logins to record the host key, want 1", n)
	}

	agentHost.kill()
	p := recorded.Probe(ctx)
	if p.AgentReachable || !errors.Is(p.AgentError, ErrUnreachable) || p.SSHSkipped || !p.SSHReachable {
		t.Fatalf("probe with the agent down = %+v, want SSH probed and reachable", p)
	}
	if n := logins.count.Load(); n != 2 {
		t.Fatalf("%d SSH logins after the agent went down, want 2", n)
	}
}
