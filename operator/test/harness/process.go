package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a child process in a process group of its own, its output appended to a
// log file. It is stopped by PID (the group), never by name.
type Process struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
	waitErr error
}

// procSpec describes how to start a Process.
type procSpec struct {
	name    string
	argv    []string
	env     []string
	logPath string
	// ready, when set, is a substring of an output line that says the process is up.
	ready   string
	timeout time.Duration
}

// startProcess starts spec and, with spec.ready set, returns once a line containing
// it was printed (failing when the process exits first or the timeout passes).
func startProcess(ctx context.Context, spec procSpec) (*Process, error) {
	if err := os.MkdirAll(filepath.Dir(spec.logPath), 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(spec.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(spec.argv[0], spec.argv[1:]...)
	cmd.Env = spec.env
	// Pdeathsig: a harness that dies hard (a test timeout's panic, SIGKILL) takes its
	// children with it instead of leaving them running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	p := &Process{name: spec.name, cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	var once sync.Once
	go func() {
		defer logFile.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			if spec.ready != "" && strings.Contains(line, spec.ready) {
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(logFile, pr)
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	if spec.ready == "" {
		return p, nil
	}
	timeout := spec.timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	select {
	case <-ready:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before it was ready (%v); log: %s", spec.name, p.err(), spec.logPath)
	case <-time.After(timeout):
		p.Kill()
		return nil, fmt.Errorf("%s not ready within %s; log: %s", spec.name, timeout, spec.logPath)
	case <-ctx.Done():
		p.Kill()
		return nil, ctx.Err()
	}
}

func (p *Process) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// PID is the process id (also its process group id).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited tells whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to the process group and waits for the process to be reaped.
func (p *Process) Kill() {
	_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
	<-p.done
}

// Stop asks the process group to end (SIGTERM) and kills it after grace.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = syscall.Kill(-p.PID(), syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("%s did not stop within %s after SIGTERM; killed", p.name, grace)
	}
}

// errNotRoot explains why the demo host needs root.
var errNotRoot = errors.New("the demo host needs root: it runs in network and mount namespaces of its own (run as root, as CI and `make demo` do)")
