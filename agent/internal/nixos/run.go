package nixos

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxLine bounds one output line; longer lines are split, never dropped.
const maxLine = 1 << 20

// run executes argv with the agent's environment, streaming stdout and stderr line by
// line. Cancelling ctx stops the command and every process it started, in whatever
// process group or session (see procTree: nix runs its builders in sessions of their
// own): SIGTERM, then SIGKILL after killGrace.
func run(ctx context.Context, argv []string, log LineFunc) error {
	log(Agent, "$ "+strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	tree := newProcTree()
	defer tree.finish()
	cmd.Cancel = func() error { tree.terminate(cmd.Process.Pid, killGrace); return nil }
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", filepath.Base(argv[0]), err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); scanLines(stdout, Stdout, log) }()
	go func() { defer wg.Done(); scanLines(stderr, Stderr, log) }()
	wg.Wait() // the pipes must be drained before Wait closes them
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(argv[0]), firstArg(argv), err)
	}
	return nil
}

func firstArg(argv []string) string {
	if len(argv) > 1 {
		return argv[1]
	}
	return ""
}

func scanLines(r io.Reader, s Stream, log LineFunc) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), maxLine)
	sc.Split(splitLines)
	for sc.Scan() {
		log(s, sc.Text())
	}
	io.Copy(io.Discard, r) // never leave the child blocked on a full pipe
}

// splitLines is bufio.ScanLines that also cuts a line at maxLine.
func splitLines(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, bytes.TrimSuffix(data[:i], []byte("\r")), nil
	}
	if len(data) >= maxLine || (atEOF && len(data) > 0) {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// activationWrapper runs switch-to-configuration and records how it ended, so an
// agent that died meanwhile (SIGKILL, OOM, a crash) learns the result after its
// restart. Everything comes in as positional parameters — $0 the script, $1 the
// action, $2 the status file, $3 the pid file — never spliced into the script text.
// The status is the script's own exit code; the wrapper exits with it too, so
// `systemd-run --wait` still reports it.
//
// Why a file and not `systemctl show -p Result,ExecMainStatus`: a transient unit is
// unloaded once it is inactive (always with --collect, and without it after a
// success), after which systemd reports a not-found unit with ExecMainStatus=0 —
// the same as a success. The file is on the agent's persistent state dir and
// outlives the unit, the systemd manager and a reboot. systemd is asked only
// whether the unit is still running (activationRunning), where "not loaded"
// correctly means "no".
//
// /bin/sh, because the transient unit runs with systemd's default PATH, and on
// NixOS /bin holds exactly sh; only shell builtins are used after the script.
const activationWrapper = `echo "$$" > "$3"; "$0" "$1"; s=$?; echo "$s" > "$2"; exit "$s"`

// Activate implements Executor: <storePath>/bin/switch-to-configuration <action>,
// through activationWrapper, its output appended to a.logPath(), which the agent
// follows (a file, not a pipe that would hand the script SIGPIPE if the agent went
// away).
//
// With SystemdRun the script runs in a transient unit of its own, so it is not in the
// agent's cgroup: when switch-to-configuration restarts units (even nio-agent.service)
// or the agent dies, the activation still completes. The flags:
//
//	--unit=<a.Unit>           a fresh unit per activation, named by the server and
//	                          recorded in its journal before the unit starts
//	--collect                 unload the unit even when it failed
//	--wait                    block until it ends and exit with its status
//	--quiet --no-ask-password no chatter, never prompt
//	--service-type=exec       fail at once when the wrapper cannot be executed
//	-p StandardOutput=append:<log> -p StandardError=append:<log>
//	-E LOCALE_ARCHIVE -E NIXOS_INSTALL_BOOTLOADER
//	                          what nixos-rebuild passes through, when set
//
// Without SystemdRun the wrapper is the agent's child in its own process group: it
// survives the agent's process but not a systemd restart of the agent's cgroup — in
// which case it leaves no status, and the restarted agent rolls back.
func (h *Host) Activate(ctx context.Context, storePath, action string, a Activation, log LineFunc) error {
	if err := a.check(); err != nil {
		return err
	}
	script := filepath.Join(storePath, "bin", "switch-to-configuration")
	for _, p := range []string{a.statusPath(), a.pidPath()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("activation: %w", err)
		}
	}
	logFile, err := os.OpenFile(a.logPath(), os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("activation log: %w", err)
	}
	defer logFile.Close()
	inner := []string{"/bin/sh", "-c", activationWrapper, script, action, a.statusPath(), a.pidPath()}

	done := make(chan struct{})
	tailed := make(chan struct{})
	go func() { defer close(tailed); follow(a.logPath(), done, log) }()
	var runErr error
	if h.cfg.SystemdRun {
		argv := []string{"systemd-run", "--unit=" + a.Unit, "--collect", "--wait", "--quiet", "--no-ask-password",
			"--service-type=exec",
			"--property=StandardOutput=append:" + a.logPath(), "--property=StandardError=append:" + a.logPath()}
		for _, v := range []string{"LOCALE_ARCHIVE", "NIXOS_INSTALL_BOOTLOADER"} {
			if _, ok := os.LookupEnv(v); ok {
				argv = append(argv, "--setenv="+v)
			}
		}
		argv = append(argv, "--")
		runErr = run(context.WithoutCancel(ctx), append(argv, inner...), log)
	} else {
		runErr = runToFile(ctx, inner, logFile, log)
	}
	close(done)
	<-tailed
	if code, ok := readStatus(a.statusPath()); ok {
		return exitError(code)
	}
	if runErr != nil {
		return runErr
	}
	return fmt.Errorf("activation %s ended without recording its exit status in %s", a.Unit, a.statusPath())
}

// runToFile runs argv with stdout and stderr on f, in its own process group.
func runToFile(ctx context.Context, argv []string, f *os.File, log LineFunc) error {
	log(Agent, "$ "+strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(argv[0]), firstArg(argv), err)
	}
	return nil
}

func exitError(code int) error {
	if code == 0 {
		return nil
	}
	return fmt.Errorf("switch-to-configuration exited with status %d", code)
}

// readStatus reads the exit status the wrapper wrote; ok is false while there is
// none (or only part of one: the write is not atomic, but it is a few bytes and the
// caller re-reads after the activation is seen ended).
func readStatus(path string) (code int, ok bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(data))
	if !strings.HasSuffix(string(data), "\n") {
		return 0, false
	}
	code, err = strconv.Atoi(s)
	return code, err == nil
}

// WaitActivation implements Executor: it polls until the activation's status file
// appears, or until the activation is seen no longer running without one — the
// latter is an error, since nobody can tell what it did. Its log is followed from
// the start, so the operation's log shows the whole activation.
func (h *Host) WaitActivation(ctx context.Context, a Activation, log LineFunc) error {
	if err := a.check(); err != nil {
		return err
	}
	poll := h.cfg.PollInterval
	if poll <= 0 {
		poll = time.Second
	}
	done := make(chan struct{})
	tailed := make(chan struct{})
	if _, err := os.Stat(a.logPath()); err == nil {
		go func() { defer close(tailed); follow(a.logPath(), done, log) }()
	} else {
		close(tailed)
	}
	defer func() { close(done); <-tailed }()
	var lastErr string
	for {
		if code, ok := readStatus(a.statusPath()); ok {
			return exitError(code)
		}
		running, err := h.activationRunning(ctx, a)
		if err != nil {
			// Unknown is not "ended": rolling back beside a running activation
			// would run two at once. Keep asking; say why the agent waits.
			if err.Error() != lastErr {
				log(Agent, "cannot tell whether activation "+a.Unit+" still runs: "+err.Error())
				lastErr = err.Error()
			}
		} else if !running {
			if code, ok := readStatus(a.statusPath()); ok { // it may have ended between the two reads
				return exitError(code)
			}
			return fmt.Errorf("activation %s is not running and recorded no exit status in %s (it never started, or was killed)", a.Unit, a.statusPath())
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// activationRunning asks systemd about the transient unit (with SystemdRun), or
// checks the wrapper's pid (without).
func (h *Host) activationRunning(ctx context.Context, a Activation) (bool, error) {
	if h.cfg.SystemdRun {
		// is-active prints the state and exits non-zero unless "active"; the state is
		// what counts ("inactive" also for a unit that is no longer loaded).
		out, err := exec.CommandContext(ctx, "systemctl", "is-active", a.Unit).Output()
		state := strings.TrimSpace(string(out))
		switch state {
		case "active", "activating", "deactivating", "reloading", "refreshing":
			return true, nil
		case "inactive", "failed":
			return false, nil
		}
		return false, fmt.Errorf("systemctl is-active %s: %q (%v)", a.Unit, state, err)
	}
	data, err := os.ReadFile(a.pidPath())
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return false, nil // the wrapper died while writing its pid
	}
	// The pid must still be our wrapper, not a process that reused the number:
	// its command line names the status file.
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false, nil
	}
	return bytes.Contains(cmdline, []byte(a.statusPath())), nil
}

// follow streams the lines appended to path until done is closed, then the rest.
// systemd writes the file, so polling is the only signal there is.
func follow(path string, done <-chan struct{}, log LineFunc) {
	f, err := os.Open(path)
	if err != nil {
		log(Agent, "cannot follow activation output: "+err.Error())
		return
	}
	defer f.Close()
	var partial []byte
	finishing := false
	buf := make([]byte, 32*1024)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			partial = append(partial, buf[:n]...)
			for {
				i := bytes.IndexByte(partial, '\n')
				if i < 0 {
					break
				}
				log(Stdout, string(partial[:i]))
				partial = partial[i+1:]
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			log(Agent, "reading activation output: "+err.Error())
			return
		}
		if finishing { // at EOF after the unit ended: nothing more will come
			if len(partial) > 0 {
				log(Stdout, string(partial))
			}
			return
		}
		select {
		case <-done:
			finishing = true
		case <-time.After(200 * time.Millisecond):
		}
	}
}
