package health

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	// maxOutput is how much of a command's output is kept: its tail.
	maxOutput = 8 << 10
	// messageLines is how many of the last output lines go into a message.
	messageLines = 5
	// drainGrace is how long output is still read after the process group was
	// killed: only a process that left the group (setsid) can hold the pipe longer.
	drainGrace = 500 * time.Millisecond
)

// Runner runs the argv of a command check.
type Runner interface {
	// Run executes argv until it exits or ctx ends, and returns the tail of its
	// combined stdout and stderr (at least a few KiB) and an error unless it exited
	// with status 0. When ctx ends, Run stops the command and everything it started
	// before it returns.
	Run(ctx context.Context, argv []string) (output []byte, err error)
}

// DirectRunner runs commands as the agent's children, each in a process group of
// its own that is killed when the command ends or its time is up. Inside the agent's
// NixOS unit they share its sandbox: no devices, a read-only file system, no
// capabilities.
type DirectRunner struct{}

// Run implements Runner.
func (DirectRunner) Run(ctx context.Context, argv []string) ([]byte, error) {
	var out tailBuffer
	err := runGroup(ctx, argv, &out, &out)
	return out.Bytes(), err
}

// SystemdRunner runs each command in a transient unit of its own, outside the
// agent's sandbox, the way the agent runs nixos-facter:
//
//	--unit=nio-health-<random>  a name to stop it by when the deadline ends first
//	--pipe                      its stdout and stderr come back on our pipe
//	--wait --collect            block until it ends; unload it even when it failed
//	--quiet --no-ask-password   no chatter, never prompt
//	--service-type=exec         fail at once when argv[0] cannot be executed
//	-p RuntimeMaxSec=<left>     systemd itself kills it at the deadline
//
// The unit gets systemd's environment, not the agent's: hence absolute argv[0].
type SystemdRunner struct {
	// SystemdRun and Systemctl are the binaries; "" means on PATH.
	SystemdRun string
	Systemctl  string
}

// Run implements Runner.
func (r SystemdRunner) Run(ctx context.Context, argv []string) ([]byte, error) {
	unit, err := randomUnit()
	if err != nil {
		return nil, err
	}
	args := []string{orDefault(r.SystemdRun, "systemd-run"), "--unit=" + unit, "--pipe", "--wait", "--collect",
		"--quiet", "--no-ask-password", "--service-type=exec"}
	if d, ok := ctx.Deadline(); ok {
		args = append(args, fmt.Sprintf("--property=RuntimeMaxSec=%dms", max(time.Until(d).Milliseconds(), 1)))
	}
	args = append(append(args, "--"), argv...)
	var out tailBuffer
	err = runGroup(ctx, args, &out, &out)
	if ctx.Err() != nil {
		// Killing systemd-run does not stop the unit; RuntimeMaxSec will, but the
		// caller was promised that nothing runs on once Run returns.
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		var ignored tailBuffer
		_ = runGroup(kctx, []string{orDefault(r.Systemctl, "systemctl"), "kill", "--signal=SIGKILL", "--", unit}, &ignored, &ignored)
	}
	return out.Bytes(), err
}

func randomUnit() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("name a transient unit: %w", err)
	}
	return "nio-health-" + hex.EncodeToString(b) + ".service", nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runGroup runs argv in a process group of its own, from /, stdin /dev/null, stdout
// on out and stderr on errOut (the same writer for combined output). The whole group
// is killed when ctx ends, and again once argv exits, so a check leaves no process
// behind (one that left the group with setsid is out of reach). The pattern is
// nixos.run's; the writes happen on one goroutine per pipe.
func runGroup(ctx context.Context, argv []string, out, errOut io.Writer) error {
	if len(argv) == 0 {
		return errors.New("no command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }

	// Our own pipes, not exec's: exec's Wait would wait for every holder of the pipe,
	// and a backgrounded child holds it until it is killed — after Wait.
	type pipe struct{ r, w *os.File }
	var pipes []pipe
	closeAll := func() {
		for _, p := range pipes {
			p.r.Close()
			p.w.Close()
		}
	}
	newPipe := func() (*os.File, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		pipes = append(pipes, pipe{r, w})
		return w, nil
	}
	var err error
	if cmd.Stdout, err = newPipe(); err != nil {
		closeAll()
		return err
	}
	cmd.Stderr = cmd.Stdout
	if errOut != out {
		if cmd.Stderr, err = newPipe(); err != nil {
			closeAll()
			return err
		}
	}
	if err := cmd.Start(); err != nil {
		closeAll()
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	dst := []io.Writer{out, errOut}
	done := make(chan struct{}, len(pipes))
	for i, p := range pipes {
		p.w.Close() // the child has its copy; EOF comes when the last holder is gone
		go func() {
			io.Copy(dst[i], p.r)
			done <- struct{}{}
		}()
	}
	waitErr := cmd.Wait()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // leftovers; ESRCH when there are none
	grace := time.Now().Add(drainGrace)
	for _, p := range pipes {
		p.r.SetReadDeadline(grace)
	}
	for range pipes {
		<-done
	}
	for _, p := range pipes {
		p.r.Close()
	}
	if waitErr != nil {
		return fmt.Errorf("%s: %w", filepath.Base(argv[0]), waitErr)
	}
	return nil
}

// tailBuffer keeps the last maxOutput bytes written to it.
type tailBuffer struct {
	buf       []byte
	truncated bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - maxOutput; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.truncated = true
	}
	return len(p), nil
}

// Bytes is the tail, starting at a line boundary when the front was cut.
func (b *tailBuffer) Bytes() []byte {
	if b.truncated {
		if i := bytes.IndexByte(b.buf, '\n'); i >= 0 {
			return b.buf[i+1:]
		}
	}
	return b.buf
}

// lastLines is the last n non-empty lines of out, joined for a one-line message.
func lastLines(out []byte, n int) string {
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// checkCommand runs one attempt of a command check; ctx carries the overall deadline.
func (c *Checker) checkCommand(ctx context.Context, cc *CommandCheck) (bool, string) {
	cctx, cancel := context.WithTimeout(ctx, cc.Timeout)
	defer cancel()
	out, err := c.runner().Run(cctx, cc.Argv)
	name := filepath.Base(cc.Argv[0])
	var msg string
	var exit *exec.ExitError
	switch {
	case err == nil:
		msg = name + " exited with status 0"
	case ctx.Err() != nil:
		msg = name + " was still running at the overall deadline and was killed"
	case cctx.Err() != nil:
		msg = fmt.Sprintf("%s did not exit within its timeout of %s and was killed", name, cc.Timeout)
	case errors.As(err, &exit) && exit.Exited():
		msg = fmt.Sprintf("%s exited with status %d", name, exit.ExitCode())
	default:
		msg = err.Error()
	}
	if tail := lastLines(out, messageLines); tail != "" {
		msg += "; output: " + tail
	}
	return err == nil, msg
}
