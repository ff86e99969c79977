// Package oplog keeps the output of each configuration's operations in memory, for
// `nio logs`: the running (or last) operation and the one before, each bounded to its
// last MaxBytes. Lines arrive already redacted (the controller redacts before it
// writes here, as it does before it logs); nothing here reads or stores a secret.
//
// The operator keeps no log across restarts: after one, a configuration's log starts
// with its next operation.
package oplog

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// DefaultMaxBytes bounds one operation's kept output.
const DefaultMaxBytes = 4 << 20

// entryOverhead is what an entry costs besides its text, counted against MaxBytes so
// that a flood of empty lines is bounded too.
const entryOverhead = 64

// Entry is one line of an operation's output, or the start of a phase (Line empty,
// PhaseStart true).
type Entry struct {
	// Seq numbers the operation's entries from 1, dropped ones included.
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Phase      string    `json:"phase"`
	PhaseStart bool      `json:"phaseStart,omitempty"`
	Line       string    `json:"line,omitempty"`
}

// Info describes an operation.
type Info struct {
	ID        string    `json:"id"`
	Commit    string    `json:"commit,omitempty"`
	Action    string    `json:"action,omitempty"`
	StartTime time.Time `json:"startTime"`
	// Ended is set once the operation has an outcome (or the operator stopped
	// waiting for it); Outcome and Message say which.
	Ended   bool   `json:"ended"`
	Outcome string `json:"outcome,omitempty"`
	Message string `json:"message,omitempty"`
	// Dropped counts the entries no longer kept (the oldest, beyond MaxBytes).
	Dropped uint64 `json:"dropped,omitempty"`
}

// Store holds the logs of every configuration. The zero value is not usable: use
// NewStore. A nil *Store accepts writes and keeps nothing.
type Store struct {
	maxBytes int
	mu       sync.Mutex
	logs     map[types.NamespacedName]*pair
}

// pair is a configuration's current and previous operation.
type pair struct {
	current, previous *Operation
}

// NewStore keeps at most maxBytes per operation (DefaultMaxBytes when ≤ 0).
func NewStore(maxBytes int) *Store {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	return &Store{maxBytes: maxBytes, logs: map[types.NamespacedName]*pair{}}
}

// Begin returns the log of operation info.ID of configuration key. The same ID
// continues the same log (a pass that attaches to a running operation); a new ID
// makes the current log the previous one.
func (s *Store) Begin(key types.NamespacedName, info Info) *Operation {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.logs[key]
	if p == nil {
		p = &pair{}
		s.logs[key] = p
	}
	if p.current != nil && p.current.info.ID == info.ID {
		p.current.reopen()
		return p.current
	}
	if p.current != nil && !p.current.Info().Ended {
		p.current.End("Superseded", "another operation started")
	}
	info.Ended, info.Outcome, info.Message, info.Dropped = false, "", "", 0
	p.previous, p.current = p.current, &Operation{info: info, maxBytes: s.maxBytes, changed: make(chan struct{})}
	return p.current
}

// Get returns the current (previous false) or previous operation of key, or nil.
func (s *Store) Get(key types.NamespacedName, previous bool) *Operation {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.logs[key]
	if p == nil {
		return nil
	}
	if previous {
		return p.previous
	}
	return p.current
}

// Forget drops key's logs (the configuration is gone).
func (s *Store) Forget(key types.NamespacedName) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.logs, key)
}

// Operation is one operation's bounded log. Its methods are safe for concurrent use
// and accept a nil receiver (a Store that keeps nothing).
type Operation struct {
	maxBytes int
	mu       sync.Mutex
	info     Info
	phase    string
	entries  []Entry // oldest first; entries[0] has Seq info.Dropped+1
	head     int     // entries[:head] are dropped, kept only until compaction
	size     int
	seq      uint64
	// changed is closed and replaced whenever an entry is added or the operation ends.
	changed chan struct{}
}

// Now is the clock of entries; tests replace it.
var Now = time.Now

// Phase records the start of a phase; the lines after it carry its name.
func (o *Operation) Phase(phase, detail string) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.phase = phase
	o.add(Entry{Phase: phase, PhaseStart: true, Line: detail})
}

// Line records one line of output (already redacted).
func (o *Operation) Line(line string) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.add(Entry{Phase: o.phase, Line: line})
}

// End records the operation's outcome; later lines are still kept (an attach may
// replay some), a later End replaces it.
func (o *Operation) End(outcome, message string) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.info.Ended, o.info.Outcome, o.info.Message = true, outcome, message
	o.notify()
}

func (o *Operation) reopen() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.info.Ended, o.info.Outcome, o.info.Message = false, "", ""
	o.notify()
}

func (o *Operation) add(e Entry) {
	o.seq++
	e.Seq = o.seq
	e.Time = Now()
	o.entries = append(o.entries, e)
	o.size += len(e.Line) + len(e.Phase) + entryOverhead
	for o.size > o.maxBytes && o.head < len(o.entries)-1 {
		d := o.entries[o.head]
		o.size -= len(d.Line) + len(d.Phase) + entryOverhead
		o.entries[o.head] = Entry{}
		o.head++
		o.info.Dropped++
	}
	// Compact once the dropped prefix is as long as what is kept: amortised O(1),
	// and the backing array never holds more than twice the kept entries.
	if o.head > 0 && o.head >= len(o.entries)-o.head {
		o.entries = append([]Entry(nil), o.entries[o.head:]...)
		o.head = 0
	}
	o.notify()
}

func (o *Operation) notify() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// Read returns the entries after sequence number after (0: all kept), the
// operation's info, and a channel closed at the next change.
func (o *Operation) Read(after uint64) ([]Entry, Info, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	kept := o.entries[o.head:]
	first := o.info.Dropped + 1 // Seq of kept[0]
	start := 0
	if after >= first {
		start = int(after - first + 1)
	}
	if start > len(kept) {
		start = len(kept)
	}
	return append([]Entry(nil), kept[start:]...), o.info, o.changed
}

// Info returns the operation's description.
func (o *Operation) Info() Info {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.info
}
