package webhook

import (
	"crypto/sha256"
	"net/http"
	"sync"
	"time"
)

// Defaults of the memory of deliveries (nio-operator's flags).
const (
	// DefaultReplayWindow is how long a delivery is remembered.
	DefaultReplayWindow = 24 * time.Hour
	// DefaultMaxDeliveries bounds how many are (about 100 bytes each); past it the
	// oldest is forgotten first.
	DefaultMaxDeliveries = 10000
)

type deliveryKey [sha256.Size]byte

// deliveryKeys are what identifies a push delivery: the forge's delivery id, and,
// for the forges whose signature covers a body that is unique per push, the body —
// the id header is not signed, so a replay with a fresh id would pass on the id alone.
func deliveryKeys(p *provider, h http.Header, body []byte) []deliveryKey {
	var keys []deliveryKey
	if id := h.Get(p.deliveryHeader); id != "" {
		keys = append(keys, sha256.Sum256([]byte(p.name+"\x00delivery\x00"+id)))
	}
	if p.uniqueBody {
		d := sha256.New()
		d.Write([]byte(p.name + "\x00body\x00"))
		d.Write(body)
		keys = append(keys, deliveryKey(d.Sum(nil)))
	}
	return keys
}

// deliveries remembers the keys of the pushes handled in the last window, at most
// max of them; safe for concurrent use.
type deliveries struct {
	window time.Duration
	max    int

	mu    sync.Mutex
	seen  map[deliveryKey]time.Time
	queue []seenKey // in the order seen: the oldest first
}

type seenKey struct {
	key deliveryKey
	at  time.Time
}

func newDeliveries(window time.Duration, max int) *deliveries {
	if max <= 0 {
		max = DefaultMaxDeliveries
	}
	return &deliveries{window: window, max: max, seen: map[deliveryKey]time.Time{}}
}

// claim records keys as handled now, unless one of them was handled within the
// window: then the delivery is a replay and claim returns false. Two deliveries of
// one push arriving together are told apart: only the first claim succeeds.
func (d *deliveries) claim(keys []deliveryKey, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.queue) > 0 && now.Sub(d.queue[0].at) >= d.window {
		d.popLocked()
	}
	for _, k := range keys {
		if _, ok := d.seen[k]; ok {
			return false
		}
	}
	for _, k := range keys {
		d.seen[k] = now
		d.queue = append(d.queue, seenKey{k, now})
	}
	for len(d.seen) > d.max {
		d.popLocked()
	}
	// Released keys leave stale entries behind; keep the queue near the map's size.
	if len(d.queue) > 2*d.max {
		live := make([]seenKey, 0, len(d.seen))
		for _, e := range d.queue {
			if at, ok := d.seen[e.key]; ok && at.Equal(e.at) {
				live = append(live, e)
			}
		}
		d.queue = live
	}
	return true
}

// release forgets keys: the push was not handled (its trigger failed), so the
// forge's redelivery must run.
func (d *deliveries) release(keys []deliveryKey) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range keys {
		delete(d.seen, k)
	}
}

func (d *deliveries) popLocked() {
	e := d.queue[0]
	d.queue = d.queue[1:]
	if at, ok := d.seen[e.key]; ok && at.Equal(e.at) {
		delete(d.seen, e.key)
	}
}

// len is the number of keys remembered.
func (d *deliveries) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.seen)
}
