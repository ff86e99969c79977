package transport

import (
	"bytes"
	"container/list"
	"crypto/tls"
	"sync"
)

// sessionCache is a tls.ClientSessionCache, least recently used first out, that keeps
// each session serialized: the ticket and the session state's bytes (certificates as
// DER), not the parsed state Go's LRU cache keeps (the agent's parsed certificate
// and chain, and the whole ticket message the ticket is a slice of). About 2 KB per
// agent instead of about 7: at 5000 Machines some 25 MB less of the operator's live
// heap, for parsing the session again (the agent's certificate, no signature check)
// when it is resumed, once per probe.
type sessionCache struct {
	capacity int

	mu    sync.Mutex
	order *list.List // of *sessionEntry, most recently used first
	items map[string]*list.Element
}

type sessionEntry struct {
	key           string
	ticket, state []byte
}

func newSessionCache(capacity int) *sessionCache {
	return &sessionCache{capacity: capacity, order: list.New(), items: map[string]*list.Element{}}
}

// Put keeps cs for key; a nil cs forgets key (tls.ClientSessionCache's contract).
func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	var entry *sessionEntry
	if cs != nil {
		ticket, st, err := cs.ResumptionState()
		if err != nil || st == nil {
			return
		}
		state, err := st.Bytes()
		if err != nil {
			return
		}
		entry = &sessionEntry{key: key, ticket: bytes.Clone(ticket), state: state}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.order.Remove(e)
		delete(c.items, key)
	}
	if entry == nil {
		return
	}
	c.items[key] = c.order.PushFront(entry)
	for c.order.Len() > c.capacity {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*sessionEntry).key)
	}
}

// Get returns the session kept for key, parsed again; a session that no longer
// parses is forgotten (the next handshake is a full one).
func (c *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	e, ok := c.items[key]
	if !ok {
		c.mu.Unlock()
		return nil, false
	}
	c.order.MoveToFront(e)
	entry := e.Value.(*sessionEntry)
	c.mu.Unlock()
	st, err := tls.ParseSessionState(entry.state)
	if err == nil {
		var cs *tls.ClientSessionState
		if cs, err = tls.NewResumptionState(entry.ticket, st); err == nil {
			return cs, true
		}
	}
	c.mu.Lock()
	if cur, ok := c.items[key]; ok && cur == e { // not a session Put meanwhile
		c.order.Remove(e)
		delete(c.items, key)
	}
	c.mu.Unlock()
	return nil, false
}

// Len is how many sessions the cache holds.
func (c *sessionCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
