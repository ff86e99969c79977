// Package harness runs NIO end to end with real processes, for the e2e tests and for
// `make demo`: a control plane (kube-apiserver and etcd from bin/k8s), install.sh
// against it, the nio-operator binary running as its ServiceAccount, a git
// http-backend serving a fixture flake with token auth, and one demo host — a network
// and mount namespace running a real sshd and the real nio-agent with real Nix, whose
// system profile, /run and /var/lib/nio* are scratch.
//
// It is not a test package: the demo program uses it too. Everything it starts is
// registered on a Cleanup stack and stopped by PID (or deleted, for the namespace)
// when the stack runs, also after a failure.
package harness

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/homystack/nio/operator/internal/testenv"
)

// Cleanup is a stack of undo steps, run last-in first-out.
type Cleanup struct {
	mu    sync.Mutex
	steps []cleanupStep
}

type cleanupStep struct {
	what string
	fn   func() error
}

// Add registers fn, described by what for error messages.
func (c *Cleanup) Add(what string, fn func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, cleanupStep{what, fn})
}

// Run runs every step once, newest first, and returns their errors joined.
func (c *Cleanup) Run() error {
	c.mu.Lock()
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("clean up %s: %w", steps[i].what, err))
		}
	}
	return errors.Join(errs...)
}

// Env is one harness run: its scratch directory, its cleanup stack and where it
// narrates what it does.
type Env struct {
	// Dir is the run's scratch directory, removed at cleanup.
	Dir string
	// Root is the repository root (where go.work and install.sh are).
	Root string
	// Out receives the narration: commands and their output.
	Out io.Writer
	// Cleanup undoes everything the run started.
	Cleanup *Cleanup
}

// NewEnv makes a scratch directory (0755: the host's sshd sessions read it) and finds
// the repository root above the working directory.
func NewEnv(out io.Writer) (*Env, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "nio-e2e-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	c := &Cleanup{}
	c.Add("scratch directory", func() error { return os.RemoveAll(dir) })
	return &Env{Dir: dir, Root: root, Out: out, Cleanup: c}, nil
}

// Path is a path under the run's scratch directory.
func (e *Env) Path(elem ...string) string { return filepath.Join(append([]string{e.Dir}, elem...)...) }

// Printf narrates.
func (e *Env) Printf(format string, args ...any) { fmt.Fprintf(e.Out, format, args...) }
