package transport

import (
	"crypto/tls"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/homystack/nio/api/identity"
)

// Defaults of AgentPool.
const (
	// DefaultAgentIdleTimeout is far short of the probe interval (1m) on purpose: a
	// connection serves the calls of a pass and of the pass that follows it at once
	// (an apply's Machine pass probes the new system over the apply's connection),
	// and an idle fleet holds none. An open connection weighs about 40 KB of heap
	// and several goroutines (gRPC's reader, writer, keepalive and the channel's
	// serializers): at 5000 Machines probed every minute (83 a second), 10 s kept
	// about 1000 open (6200 goroutines in the operator, measured) for nothing but a
	// saved handshake; 3 s keeps under a third of that.
	DefaultAgentIdleTimeout = 3 * time.Second
	DefaultAgentMaxLifetime = time.Hour
	// DefaultAgentSessionCacheSize holds a TLS session for 10 000 agents (about 2 KB
	// each, see sessionCache).
	DefaultAgentSessionCacheSize = 10000
)

// AgentPool keeps one mTLS connection per Machine's agent, shared by the calls of
// every Agent built on it (AgentConfig.Pool): the calls of one pass (status and
// apply, facts, renewals) and of a burst of passes share one TLS handshake. Confirm
// never uses it (see Agent.Confirm).
//
// A connection is dropped, and the next call dials anew, when a call on it failed in
// transport, when it was unused for IdleTimeout, when it is older than MaxLifetime,
// when an Agent of the Machine has another address or server name (its spec
// changed), and on Forget. A dropped connection still serving a call (an Apply
// streams for minutes) is closed when that call ends.
type AgentPool struct {
	// IdleTimeout closes a connection no call used for this long (default
	// DefaultAgentIdleTimeout).
	IdleTimeout time.Duration
	// MaxLifetime is how long a connection is lent out (default
	// DefaultAgentMaxLifetime). The agent checks the operator's certificate at the
	// handshake only, and the operator the agent's: a bounded life makes both
	// sides check again, after a rotation or a change of trust.
	MaxLifetime time.Duration

	// SessionCacheSize is how many agents' TLS sessions are kept for resumption
	// (default DefaultAgentSessionCacheSize).
	SessionCacheSize int

	mu           sync.Mutex
	conns        map[machineKey]*pooledConn
	sessionsOnce sync.Once
	sessions     tls.ClientSessionCache

	handshakes, resumed atomic.Int64
}

// countHandshake counts a TLS handshake of an agent connection (nil pool: none).
func (p *AgentPool) countHandshake(resumed bool) {
	if p == nil {
		return
	}
	p.handshakes.Add(1)
	if resumed {
		p.resumed.Add(1)
	}
}

// Handshakes is how many TLS handshakes the pool's agents made, and how many of them
// resumed a session.
func (p *AgentPool) Handshakes() (all, resumed int64) {
	return p.handshakes.Load(), p.resumed.Load()
}

// sessionCache is the pool's TLS session cache: a connection dialed again (after
// IdleTimeout, and every Confirm) resumes the agent's last session, a handshake
// without certificate signatures or chain checks (the agent checks the operator's
// identity on resumption too: VerifyConnection runs). Keyed by the agent's server
// name, one per Machine; a renewed agent certificate forgets its entry (Forget).
// (A connection is dialed under mu: the cache has a lock of its own.)
func (p *AgentPool) sessionCache() tls.ClientSessionCache {
	p.sessionsOnce.Do(func() {
		n := p.SessionCacheSize
		if n <= 0 {
			n = DefaultAgentSessionCacheSize
		}
		p.sessions = newSessionCache(n)
	})
	return p.sessions
}

type machineKey struct{ namespace, name string }

// poolKey is what a connection was made for: the Machine, its agent's address and
// the name its certificate must carry.
type poolKey struct {
	machine             machineKey
	address, serverName string
}

type pooledConn struct {
	*agentConn
	key      poolKey
	created  time.Time
	lastUsed time.Time
	users    int  // calls using it now
	lends    int  // calls it was lent to
	dropped  bool // out of the pool: closed when its last call ends
	closed   bool
	idle     *time.Timer
}

// get lends the Machine's connection, dialing one when there is none to lend;
// reused says it was lent before.
func (p *AgentPool) get(key poolKey, dial func() (*agentConn, error)) (c *pooledConn, reused bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = map[machineKey]*pooledConn{}
	}
	c = p.conns[key.machine]
	if c != nil && (c.key != key || time.Since(c.created) >= p.maxLifetime() || !c.usable()) {
		p.dropLocked(c)
		c = nil
	}
	if c == nil {
		ac, err := dial()
		if err != nil {
			return nil, false, err
		}
		c = &pooledConn{agentConn: ac, key: key, created: time.Now()}
		p.conns[key.machine] = c
	}
	reused = c.lends > 0
	c.lends++
	c.users++
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	return c, reused, nil
}

// usable: gRPC gave up connecting (TransientFailure) or the connection is closed.
// An idle connection (the agent closed it, or it never connected) dials on its next
// call by itself.
func (c *pooledConn) usable() bool {
	s := c.cc.GetState()
	return s != connectivity.TransientFailure && s != connectivity.Shutdown
}

// put takes back a connection lent by get; failed drops it.
func (p *AgentPool) put(c *pooledConn, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.users--
	c.lastUsed = time.Now()
	if failed {
		p.dropLocked(c)
		return
	}
	if c.users > 0 {
		return
	}
	if c.dropped {
		c.closeLocked()
		return
	}
	c.idle = time.AfterFunc(p.idleTimeout(), func() { p.expire(c) })
}

// expire drops c if it is still unused since its idle timer was set (a timer
// stopped too late by get finds it used again).
func (p *AgentPool) expire(c *pooledConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.users == 0 && !c.dropped && time.Since(c.lastUsed) >= p.idleTimeout() {
		p.dropLocked(c)
	}
}

// dropLocked takes c out of the pool; it is closed now, or when its last call ends.
func (p *AgentPool) dropLocked(c *pooledConn) {
	if p.conns[c.key.machine] == c {
		delete(p.conns, c.key.machine)
	}
	c.dropped = true
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	if c.users == 0 {
		c.closeLocked()
	}
}

func (c *pooledConn) closeLocked() {
	if !c.closed {
		c.closed = true
		_ = c.cc.Close()
	}
}

// Forget drops the connection of Machine namespace/name and its TLS session: the
// Machine is gone, its agent disabled, or its certificate renewed (a resumed session
// would skip checking the new one).
func (p *AgentPool) Forget(namespace, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[machineKey{namespace: namespace, name: name}]; c != nil {
		p.dropLocked(c)
	}
	p.sessionCache().Put(identity.MachineDNSName(namespace, name), nil)
}

// Close drops every connection (the operator stops).
func (p *AgentPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		p.dropLocked(c)
	}
}

// Len is how many connections the pool holds.
func (p *AgentPool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *AgentPool) idleTimeout() time.Duration {
	if p.IdleTimeout > 0 {
		return p.IdleTimeout
	}
	return DefaultAgentIdleTimeout
}

func (p *AgentPool) maxLifetime() time.Duration {
	if p.MaxLifetime > 0 {
		return p.MaxLifetime
	}
	return DefaultAgentMaxLifetime
}

// connectionFailed tells whether a call's error says the connection failed, as
// opposed to an answer of the agent: such a connection is not lent again.
func connectionFailed(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrUnreachable) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}
