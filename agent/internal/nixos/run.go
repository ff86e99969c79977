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
// line. Cancelling ctx kills the whole process group (nix forks builders).
func run(ctx context.Context, argv []string, log LineFunc) error {
	log(Agent, "$ "+strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
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

// Activate implements Executor: <storePath>/bin/switch-to-configuration <action>.
//
// With SystemdRun the script runs in a transient unit of its own, so it is not in the
// agent's cgroup: when switch-to-configuration restarts units (even nio-agent.service)
// or the agent dies, the activation still completes. The flags:
//
//	--unit=nio-activate-<ns>  a fresh unit per activation
//	--collect                 unload the unit even when it failed
//	--wait                    block until it ends and exit with its status
//	--quiet --no-ask-password no chatter, never prompt
//	--service-type=exec       fail at once when the script cannot be executed
//	-p StandardOutput=append:<log> -p StandardError=append:<log>
//	                          output goes to a file the agent follows, not to a pipe
//	                          that would hand the script SIGPIPE if the agent went away
//	-E LOCALE_ARCHIVE -E NIXOS_INSTALL_BOOTLOADER
//	                          what nixos-rebuild passes through, when set
func (h *Host) Activate(ctx context.Context, storePath, action string, log LineFunc) error {
	script := filepath.Join(storePath, "bin", "switch-to-configuration")
	if !h.cfg.SystemdRun {
		return run(ctx, []string{script, action}, log)
	}
	name := "nio-activate-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	logPath := filepath.Join(h.cfg.RunDir, name+".log")
	if err := os.WriteFile(logPath, nil, 0o600); err != nil {
		return fmt.Errorf("activation log: %w", err)
	}
	defer os.Remove(logPath)
	argv := []string{"systemd-run", "--unit=" + name, "--collect", "--wait", "--quiet", "--no-ask-password",
		"--service-type=exec",
		"--property=StandardOutput=append:" + logPath, "--property=StandardError=append:" + logPath}
	for _, v := range []string{"LOCALE_ARCHIVE", "NIXOS_INSTALL_BOOTLOADER"} {
		if _, ok := os.LookupEnv(v); ok {
			argv = append(argv, "--setenv="+v)
		}
	}
	argv = append(argv, "--", script, action)

	done := make(chan struct{})
	tailed := make(chan struct{})
	go func() { defer close(tailed); follow(logPath, done, log) }()
	err := run(context.WithoutCancel(ctx), argv, log)
	close(done)
	<-tailed
	return err
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
