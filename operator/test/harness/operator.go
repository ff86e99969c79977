package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Binaries are nio-operator, nio-agent and the nio CLI, built once per run.
type Binaries struct {
	// Operator, Agent and Nio are the paths of nio-operator, nio-agent and nio.
	Operator, Agent, Nio string
}

// BuildBinaries runs `go build` of operator/cmd/nio-operator and agent/cmd/nio-agent
// into the run's scratch directory.
func BuildBinaries(ctx context.Context, e *Env) (Binaries, error) {
	dir := e.Path("bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Binaries{}, err
	}
	e.Printf("\n$ go build -o %s ./operator/cmd/nio-operator ./agent/cmd/nio-agent ./operator/cmd/nio\n", dir)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "./operator/cmd/nio-operator", "./agent/cmd/nio-agent", "./operator/cmd/nio")
	cmd.Dir = e.Root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return Binaries{}, fmt.Errorf("go build: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return Binaries{Operator: filepath.Join(dir, "nio-operator"), Agent: filepath.Join(dir, "nio-agent"), Nio: filepath.Join(dir, "nio")}, nil
}

// OperatorOptions shape the operator process.
type OperatorOptions struct {
	// Binary is the nio-operator executable.
	Binary string
	// Kubeconfig authenticates it (the ServiceAccount's).
	Kubeconfig string
	// NixosAnywhere is passed as --nixos-anywhere (a recording stand-in in tests).
	NixosAnywhere string
	// LogPath receives its JSON log.
	LogPath string
	// Env is added to the process's environment.
	Env []string
	// Extra flags.
	Args []string
}

// Operator is the nio-operator process; it can be killed and started again.
type Operator struct {
	opts  OperatorOptions
	env   *Env
	mu    sync.Mutex
	proc  *Process
	probe string
	// logURL is the log endpoint of `nio logs` (https, the operator CA's certificate).
	logURL string
}

// StartOperator runs nio-operator as a process and waits until its /readyz answers.
// Timings are short so the e2e run is quick: probes every 2s, a 1s retry base and no
// ls-remote reuse.
func StartOperator(ctx context.Context, e *Env, o OperatorOptions) (*Operator, error) {
	op := &Operator{opts: o, env: e}
	e.Cleanup.Add("nio-operator", func() error { op.Kill(); return nil })
	if err := op.Start(ctx); err != nil {
		return nil, err
	}
	return op, nil
}

// Start starts the process (again).
func (op *Operator) Start(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	probe := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logPort, err := freePort()
	if err != nil {
		return err
	}
	logAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(logPort))
	argv := []string{op.opts.Binary,
		"--kubeconfig", op.opts.Kubeconfig,
		"--namespace", OperatorNamespace,
		"--metrics-bind-address", "0",
		"--health-probe-bind-address", probe,
		"--probe-interval", "2s",
		"--source-min-interval", "0s",
		"--retry-base", "1s",
		"--log-bind-address", logAddr,
		"--zap-encoder", "json",
		// Debug: the host's build output is logged at V(1).
		"--zap-log-level", "debug",
	}
	if op.opts.NixosAnywhere != "" {
		argv = append(argv, "--nixos-anywhere", op.opts.NixosAnywhere)
	}
	argv = append(argv, op.opts.Args...)
	op.env.Printf("\n$ %s   (as ServiceAccount %s/%s; log: %s)\n", strings.Join(argv, " "), OperatorNamespace, OperatorServiceAccount, op.opts.LogPath)
	p, err := startProcess(ctx, procSpec{name: "nio-operator", argv: argv, env: append(os.Environ(), op.opts.Env...), logPath: op.opts.LogPath, ready: "starting nio-operator"})
	if err != nil {
		return err
	}
	op.mu.Lock()
	op.proc, op.probe, op.logURL = p, probe, "https://"+logAddr
	op.mu.Unlock()
	return waitHTTP(ctx, "http://"+probe+"/readyz", p, time.Minute)
}

// Kill ends the process with SIGKILL, as a crashed or evicted operator ends.
func (op *Operator) Kill() {
	op.mu.Lock()
	p := op.proc
	op.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// Pause stops the process (SIGSTOP) as a hung or partitioned operator stands still:
// its connections stay open, nothing it would send is sent. Resume undoes it.
func (op *Operator) Pause() error { return op.signal(syscall.SIGSTOP) }

// Resume continues a paused process (SIGCONT).
func (op *Operator) Resume() error { return op.signal(syscall.SIGCONT) }

func (op *Operator) signal(sig syscall.Signal) error {
	op.mu.Lock()
	p := op.proc
	op.mu.Unlock()
	if p == nil || p.Exited() {
		return errors.New("nio-operator is not running")
	}
	return syscall.Kill(p.PID(), sig)
}

// LogURL is the operator's log endpoint (`nio logs --operator-url`).
func (op *Operator) LogURL() string {
	op.mu.Lock()
	defer op.mu.Unlock()
	return op.logURL
}

// Log returns the operator's log so far.
func (op *Operator) Log() (string, error) {
	b, err := os.ReadFile(op.opts.LogPath)
	return string(b), err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
