package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
)

// pooledAgent is a new Agent of Machine testNamespace/name on pool, reaching h
// through via: what the Factory builds for every pass.
func (h *agentHost) pooledAgent(t *testing.T, name string, pool *AgentPool, via *connCounter) *Agent {
	t.Helper()
	a := h.agentTransport(t, name, nil)
	a.cfg.Pool, a.cfg.Address = pool, via.addr()
	return a
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPooledAgentCallsShareOneConnectionAndConfirmDialsItsOwn: the probes, status
// and facts of several passes, concurrent calls and an apply go over one
// connection to the agent; the apply's confirmation goes over a new one, which
// proves the activated system still lets the operator in.
func TestPooledAgentCallsShareOneConnectionAndConfirmDialsItsOwn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startAgent(t, certtest.NewCA(t), "web")
	conns := countConnections(t, h.addr)
	pool := &AgentPool{}
	t.Cleanup(pool.Close)

	for range 3 {
		a := h.pooledAgent(t, "web", pool, conns)
		if p := a.Probe(ctx); !p.AgentReachable {
			t.Fatalf("probe = %+v", p)
		}
		if _, err := a.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Facts(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a := h.pooledAgent(t, "web", pool, conns)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			_, err := a.Status(ctx)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Status: %v", err)
		}
	}
	if n := conns.served.Load(); n != 1 {
		t.Fatalf("%d connections to the agent for 3 passes and 4 concurrent calls, want 1", n)
	}

	src := dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)}))
	var before, after int32
	res, err := a.Apply(ctx, ApplyRequest{
		OperationID: "op-pooled", Action: ActionSwitch, ConfirmTimeout: time.Minute,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
		OnAwaitingConfirm: func(ctx context.Context, id string) error {
			before = conns.served.Load()
			err := a.Confirm(ctx, id)
			after = conns.served.Load()
			return err
		},
	})
	if err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	if after != before+1 {
		t.Fatalf("Confirm went over %d new connections, want one of its own", after-before)
	}
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := conns.served.Load(); n != 2 {
		t.Fatalf("%d connections to the agent after an apply and a status, want 2: the pool's and the confirm's", n)
	}
	waitFor(t, "the confirm's connection is closed", func() bool { return conns.open.Load() == 1 })
}

// TestPooledAgentRedialsAfterTheAgentWasKilled: a call after the agent died finds
// it unreachable, as a call on a new connection would (the fallback may use SSH),
// and once it is back the pool dials it anew.
func TestPooledAgentRedialsAfterTheAgentWasKilled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startAgent(t, certtest.NewCA(t), "web")
	conns := countConnections(t, h.addr)
	pool := &AgentPool{}
	t.Cleanup(pool.Close)
	a := h.pooledAgent(t, "web", pool, conns)
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}

	h.kill()
	if _, err := a.Status(ctx); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Status after the agent was killed = %v, want ErrUnreachable", err)
	}
	if p := a.Probe(ctx); p.AgentReachable || !errors.Is(p.AgentError, ErrUnreachable) {
		t.Fatalf("probe after the agent was killed = %+v", p)
	}

	if err := h.restart(t); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Status(ctx); err != nil {
		t.Fatalf("Status after the agent came back: %v", err)
	}
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := conns.served.Load(); n != 2 {
		t.Fatalf("%d connections to the agent, want 2: before it was killed and after", n)
	}
}

// TestPooledConnectionIsClosedWhenIdleOrOld: a connection no call used for
// IdleTimeout is closed; one older than MaxLifetime is replaced at the next call.
func TestPooledConnectionIsClosedWhenIdleOrOld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startAgent(t, certtest.NewCA(t), "web")
	conns := countConnections(t, h.addr)

	idle := &AgentPool{IdleTimeout: 300 * time.Millisecond, MaxLifetime: time.Hour}
	t.Cleanup(idle.Close)
	a := h.pooledAgent(t, "web", idle, conns)
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle connection is closed", func() bool { return conns.open.Load() == 0 && idle.Len() == 0 })
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := conns.served.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: one before the idle timeout, one after", n)
	}
	idle.Close()
	waitFor(t, "Close closed it", func() bool { return conns.open.Load() == 0 })

	old := &AgentPool{IdleTimeout: time.Hour, MaxLifetime: 300 * time.Millisecond}
	t.Cleanup(old.Close)
	a = h.pooledAgent(t, "web", old, conns)
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := conns.served.Load(); n != 4 {
		t.Fatalf("%d connections, want 4: a new one after MaxLifetime", n)
	}
	waitFor(t, "the old connection is closed", func() bool { return conns.open.Load() == 1 })
}

// TestPooledConnectionIsClosedWhenTheMachineIsForgottenOrMoves: Forget closes the
// Machine's connection, and so does an Agent of the Machine at another address.
func TestPooledConnectionIsClosedWhenTheMachineIsForgottenOrMoves(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startAgent(t, certtest.NewCA(t), "web")
	before, after := countConnections(t, h.addr), countConnections(t, h.addr)
	pool := &AgentPool{}
	t.Cleanup(pool.Close)

	if _, err := h.pooledAgent(t, "web", pool, before).Status(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.pooledAgent(t, "web", pool, after).Status(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection to the old address is closed", func() bool { return before.open.Load() == 0 })
	if pool.Len() != 1 || after.open.Load() != 1 {
		t.Fatalf("pool holds %d connections, %d open to the new address; want 1 and 1", pool.Len(), after.open.Load())
	}

	pool.Forget(testNamespace, "web")
	waitFor(t, "Forget closed the connection", func() bool { return after.open.Load() == 0 && pool.Len() == 0 })
}

// TestPooledAgentRefusedHandshakesStayUnreachable: over the pool as over a new
// connection, an agent with another Machine's certificate, or one refusing the
// operator's client certificate, is unreachable (nothing ran), call after call.
func TestPooledAgentRefusedHandshakesStayUnreachable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ca := certtest.NewCA(t)
	h := startAgent(t, ca, "web")
	conns := countConnections(t, h.addr)
	pool := &AgentPool{}
	t.Cleanup(pool.Close)

	other := h.pooledAgent(t, "db", pool, conns) // expects db.fleet.machine.nio
	for range 2 {
		if _, err := other.Status(ctx); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("Status against another machine's agent = %v, want an unreachable certificate error", err)
		}
	}

	certPEM, keyPEM := ca.Issue(t, certtest.Options{CommonName: "intruder", ClientAuth: true})
	kp := certtest.KeyPair(t, certPEM, keyPEM)
	intruder, err := NewAgent(AgentConfig{
		Address: conns.addr(), Namespace: testNamespace, Name: "web", RootCAs: ca.Pool(), Pool: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := intruder.Status(ctx); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "client certificate") {
			t.Fatalf("Status with a non-operator client certificate = %v, want ErrUnreachable (TLS)", err)
		}
	}
	src := dirSource(t, nixtest.CopyFlake(t, "basic", nil))
	if _, err := intruder.Apply(ctx, ApplyRequest{
		OperationID: "op-x", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
	}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Apply = %v, want ErrUnreachable", err)
	}
	if got := h.nix.Activations(t); got != nil {
		t.Fatalf("an operation ran: %q", got)
	}
}

// TestPoolClosesADroppedConnectionWhenItsLastCallEnds: a connection dropped while
// a call uses it (Forget during an Apply, a renewal, an address change) is not cut
// under the call; a failed call drops it; a new lease after that dials anew.
func TestPoolClosesADroppedConnectionWhenItsLastCallEnds(t *testing.T) {
	t.Parallel()
	pool := &AgentPool{}
	t.Cleanup(pool.Close)
	a, err := NewAgent(AgentConfig{
		Address: "127.0.0.1:1", Namespace: testNamespace, Name: "web", RootCAs: x509.NewCertPool(), Pool: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	c, release, reused, err := a.conn() // gRPC connects on the first call: none here
	if err != nil || reused {
		t.Fatalf("first lease: reused=%v, %v", reused, err)
	}
	pool.Forget(testNamespace, "web")
	if c.cc.GetState() == connectivity.Shutdown {
		t.Fatal("Forget closed a connection in use")
	}
	release(nil)
	if c.cc.GetState() != connectivity.Shutdown {
		t.Fatal("a forgotten connection stayed open after its last call")
	}

	c2, release2, reused, _ := a.conn()
	if c2 == c || reused {
		t.Fatal("a lease after Forget got the forgotten connection")
	}
	release2(nil)
	c3, release3, reused, _ := a.conn()
	if c3 != c2 || !reused {
		t.Fatal("a second lease did not get the pool's connection")
	}
	release3(status.Error(codes.Unavailable, "connection reset (test)"))
	if c3.cc.GetState() != connectivity.Shutdown || pool.Len() != 0 {
		t.Fatal("a connection whose call failed in transport was kept")
	}
}

// TestRedialedAgentConnectionsResumeTheTLSSession: a connection dialed again after
// the idle timeout resumes the agent's TLS session (no certificate signatures), and
// still reaches the agent; Forget (a deleted Machine, a renewed certificate) forgets
// the session, so the next handshake is a full one that checks the certificate.
func TestRedialedAgentConnectionsResumeTheTLSSession(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startAgent(t, certtest.NewCA(t), "web")
	conns := countConnections(t, h.addr)
	pool := &AgentPool{IdleTimeout: 200 * time.Millisecond}
	t.Cleanup(pool.Close)
	a := h.pooledAgent(t, "web", pool, conns)
	status := func() {
		t.Helper()
		if _, err := a.Status(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the idle connection is closed", func() bool { return pool.Len() == 0 })
	}

	status()
	status()
	status()
	if all, resumed := pool.Handshakes(); all != 3 || resumed != 2 {
		t.Fatalf("%d handshakes, %d resumed; want 3, the last 2 resumed", all, resumed)
	}
	pool.Forget(testNamespace, "web")
	status()
	if all, resumed := pool.Handshakes(); all != 4 || resumed != 2 {
		t.Fatalf("after Forget: %d handshakes, %d resumed; want a full one", all, resumed)
	}
}
