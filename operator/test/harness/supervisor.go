package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Supervisor plays systemd for the host's nio-agent: it reads start/stop/restart
// requests from a FIFO (written by the host's systemctl stand-in) and runs the agent
// accordingly. Like the NixOS unit, it won't start the agent before its TLS identity
// exists. Tests also kill and start it directly.
type Supervisor struct {
	host *Host
	spec procSpec
	fifo *os.File

	mu       sync.Mutex
	proc     *Process
	starts   int
	changed  chan struct{} // closed and replaced whenever the agent starts or stops
	lastErr  error
	closed   bool
	loopDone chan struct{}
}

func newSupervisor(h *Host, fifo string, spec procSpec) *Supervisor {
	s := &Supervisor{host: h, spec: spec, changed: make(chan struct{}), loopDone: make(chan struct{})}
	// O_RDWR: the FIFO always has a writer (us), so reads block instead of seeing EOF
	// between two systemctl calls, and writers never block on open.
	f, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		s.lastErr = fmt.Errorf("open supervisor fifo: %w", err)
		close(s.loopDone)
		return s
	}
	s.fifo = f
	go s.loop()
	return s
}

func (s *Supervisor) loop() {
	defer close(s.loopDone)
	sc := bufio.NewScanner(s.fifo)
	for sc.Scan() {
		var err error
		switch strings.TrimSpace(sc.Text()) {
		case "start":
			if !s.Running() {
				err = s.Start(context.Background())
			}
		case "restart":
			s.Kill()
			err = s.Start(context.Background())
		case "stop":
			s.Kill()
		}
		if err != nil {
			s.mu.Lock()
			s.lastErr = err
			s.mu.Unlock()
		}
	}
}

// TLSCertPath is where, outside the host, the agent's tls.crt is once delivered.
func (s *Supervisor) TLSCertPath() string { return s.host.VarLib("nio-agent/tls/tls.crt") }

// Start starts the agent (when its identity exists) and waits until it listens.
func (s *Supervisor) Start(ctx context.Context) error {
	if _, err := os.Stat(s.TLSCertPath()); err != nil {
		return fmt.Errorf("nio-agent not started: no TLS identity yet (%w)", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("nio-agent not started: the host is shutting down")
	}
	s.mu.Unlock()
	p, err := startProcess(ctx, s.spec)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc = p
	s.starts++
	s.notifyLocked()
	s.mu.Unlock()
	return nil
}

// Kill ends the agent with SIGKILL (a crash, or systemd's stop after its timeout).
func (s *Supervisor) Kill() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		p.Kill()
		s.mu.Lock()
		s.notifyLocked()
		s.mu.Unlock()
	}
}

// Running tells whether the agent process is up.
func (s *Supervisor) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.Exited()
}

// Starts counts the agent's starts so far.
func (s *Supervisor) Starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

// WaitRunning waits until the agent has been started (by the operator's systemctl
// restart) and listens.
func (s *Supervisor) WaitRunning(ctx context.Context, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		running := s.proc != nil && !s.proc.Exited()
		changed, lastErr := s.changed, s.lastErr
		s.mu.Unlock()
		if running {
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return fmt.Errorf("nio-agent not running within %s (last supervisor error: %v)", timeout, lastErr)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Log returns the agent's log so far (JSON lines, every start appended).
func (s *Supervisor) Log() string {
	b, _ := os.ReadFile(s.spec.logPath)
	return string(b)
}

func (s *Supervisor) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// close kills the agent and stops taking requests.
func (s *Supervisor) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.Kill()
	if s.fifo != nil {
		s.fifo.Close()
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
