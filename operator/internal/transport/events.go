package transport

import (
	"bytes"
	"io"
	"sync"
	"time"
)

const (
	// logTailLines is how many output lines an ApplyResult keeps for failure events.
	logTailLines = 40
	// maxLineBytes cuts absurdly long output lines (nix can print whole derivations).
	maxLineBytes = 64 << 10
)

// emitter turns command output into ordered Events for ApplyRequest.OnEvent and keeps
// the last lines for ApplyResult.LogTail. stdout and stderr are copied by separate
// goroutines; the mutex keeps OnEvent calls one at a time.
type emitter struct {
	mu      sync.Mutex
	onEvent func(Event)
	last    []string
	writers []*lineWriter
}

func newEmitter(onEvent func(Event)) *emitter { return &emitter{onEvent: onEvent} }

func (e *emitter) emit(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if ev.Kind == EventLog {
		e.last = append(e.last, ev.Line)
		if len(e.last) > logTailLines {
			e.last = e.last[len(e.last)-logTailLines:]
		}
	}
	if e.onEvent != nil {
		e.onEvent(ev)
	}
}

func (e *emitter) phase(p Phase, detail string) {
	e.emit(Event{Kind: EventPhase, Phase: p, Detail: detail})
}

func (e *emitter) log(line string, stderr bool) {
	e.emit(Event{Kind: EventLog, Line: line, Stderr: stderr})
}

// lines returns a writer that emits one EventLog per line written to it.
func (e *emitter) lines(stderr bool) io.Writer {
	w := &lineWriter{e: e, stderr: stderr}
	e.mu.Lock()
	e.writers = append(e.writers, w)
	e.mu.Unlock()
	return w
}

// flush emits unterminated last lines of every writer (call after the command ended).
func (e *emitter) flush() {
	e.mu.Lock()
	ws := e.writers
	e.writers = nil
	e.mu.Unlock()
	for _, w := range ws {
		w.flush()
	}
}

func (e *emitter) tail() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.last...)
}

type lineWriter struct {
	e      *emitter
	stderr bool
	mu     sync.Mutex
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			if len(w.buf) >= maxLineBytes {
				w.e.log(string(w.buf), w.stderr)
				w.buf = w.buf[:0]
			}
			break
		}
		w.buf = append(w.buf, p[:i]...)
		w.e.log(string(bytes.TrimSuffix(w.buf, []byte("\r"))), w.stderr)
		w.buf = w.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.e.log(string(w.buf), w.stderr)
		w.buf = nil
	}
}
