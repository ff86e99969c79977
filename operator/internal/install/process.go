package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// drainTimeout bounds how long output is still read after the process group is gone:
// only a process that left the group (and kept the pipe) can hold it open longer.
const drainTimeout = 5 * time.Second

// exec runs the binary with args (and env added to the environment) in a session of its own, sends its merged output to
// onLine line by line, and returns its exit code. On timeout or cancellation the
// whole process group gets SIGTERM, then SIGKILL after KillGrace; when the leader
// exits, whatever it left running in its group is killed too.
func (r *Runner) exec(ctx context.Context, args, env []string, onLine func(string)) (int, error) {
	binary := r.Binary
	if binary == "" {
		binary = DefaultBinary
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	grace := r.KillGrace
	if grace <= 0 {
		grace = DefaultKillGrace
	}
	runCtx, cancel := context.WithTimeoutCause(ctx, timeout, ErrTimeout)
	defer cancel()

	// One pipe for stdout and stderr keeps the lines in the order they were written.
	pr, pw, err := os.Pipe()
	if err != nil {
		return -1, fmt.Errorf("output pipe: %w", err)
	}
	defer pr.Close()

	g := &processGroup{}
	cmd := exec.CommandContext(runCtx, binary, args...)
	cmd.Stdin = nil // /dev/null: nothing can wait for input
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.Env = append(append(os.Environ(), r.Env...), env...)
	// A new session: its own process group to kill as a whole, and no controlling
	// terminal, so ssh cannot prompt on /dev/tty either.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Cancel = func() error {
		g.terminate(cmd.Process.Pid, grace)
		return nil
	}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return -1, fmt.Errorf("start %s: %w", binary, err)
	}
	pw.Close() // the child holds the write end now; EOF comes when it (and its group) is gone

	readDone := make(chan error, 1)
	go func() { readDone <- readLines(pr, onLine) }()

	// Wait for the leader to exit without reaping it, so its pid still names the
	// group while the group is killed; then reap.
	waitErr := waitExited(cmd.Process.Pid)
	g.finish(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil && waitErr == nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			waitErr = err
		}
	}
	_ = pr.SetReadDeadline(time.Now().Add(drainTimeout))
	readErr := <-readDone

	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	switch {
	case ctx.Err() != nil:
		return code, fmt.Errorf("%s cancelled: %w", binary, ctx.Err())
	case errors.Is(context.Cause(runCtx), ErrTimeout):
		return code, fmt.Errorf("%w after %s (process group killed)", ErrTimeout, timeout)
	case waitErr != nil:
		return code, fmt.Errorf("wait for %s: %w", binary, waitErr)
	case code != 0:
		return code, fmt.Errorf("%s exited with status %d", binary, code)
	case readErr != nil && !errors.Is(readErr, os.ErrDeadlineExceeded):
		return code, fmt.Errorf("read %s output: %w", binary, readErr)
	}
	return code, nil
}

// processGroup signals a child's process group until the child is reaped. After
// that its id may name an unrelated group, so nothing is sent any more.
type processGroup struct {
	mu     sync.Mutex
	done   bool
	killer *time.Timer
}

// terminate asks the group to stop, and kills it after grace.
func (g *processGroup) terminate(pgid int, grace time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done || g.killer != nil {
		return
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	g.killer = time.AfterFunc(grace, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if !g.done {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
	})
}

// finish kills what is left of the group once its leader has exited (still
// unreaped) and stops all further signals.
func (g *processGroup) finish(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	g.done = true
	if g.killer != nil {
		g.killer.Stop()
	}
}

// waitExited blocks until process pid has exited, leaving it to be reaped.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
