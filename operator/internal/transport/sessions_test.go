package transport

import (
	"context"
	"testing"
	"time"

	"github.com/homystack/nio/testkit/certtest"
)

// TestSessionCacheKeepsSessionsSmallAndEvictsTheOldest: through a real agent, the
// serialized session resumes (TestRedialedAgentConnectionsResumeTheTLSSession counts
// the handshakes), weighs under 4 KB, and the least recently used session goes first.
func TestSessionCacheKeepsSessionsSmallAndEvictsTheOldest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startAgent(t, certtest.NewCA(t), "web")
	conns := countConnections(t, h.addr)
	pool := &AgentPool{IdleTimeout: 200 * time.Millisecond, SessionCacheSize: 2}
	t.Cleanup(pool.Close)
	a := h.pooledAgent(t, "web", pool, conns)
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	c := pool.sessionCache().(*sessionCache)
	waitFor(t, "the agent's session is kept", func() bool { return c.Len() == 1 })
	var key string
	var weight int
	c.mu.Lock()
	for k, e := range c.items {
		key = k
		entry := e.Value.(*sessionEntry)
		weight = len(entry.ticket) + len(entry.state)
	}
	c.mu.Unlock()
	t.Logf("a kept session: %d bytes", weight)
	if weight == 0 || weight > 4096 {
		t.Errorf("a kept session weighs %d bytes, want under 4 KB", weight)
	}
	cs, ok := c.Get(key)
	if !ok || cs == nil {
		t.Fatal("the kept session does not parse back")
	}

	c.Put("b", cs)
	if _, ok := c.Get(key); !ok { // key is now the most recently used
		t.Fatal("lost the agent's session")
	}
	c.Put("c", cs)
	if _, ok := c.Get("b"); ok {
		t.Error(`"b", the least recently used, was kept over capacity 2`)
	}
	if _, ok := c.Get(key); !ok {
		t.Error("the agent's session was evicted instead of the oldest")
	}
	c.Put(key, nil)
	if _, ok := c.Get(key); ok || c.Len() != 1 {
		t.Errorf("Put(nil) did not forget the session (%d kept)", c.Len())
	}
}
