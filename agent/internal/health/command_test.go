package health

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// gone waits (up to a deadline) until pid no longer runs: no /proc entry, or a
// zombie nobody has reaped yet (this machine's PID 1 may not reap orphans).
func gone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			return
		}
		// pid (comm) state ...: comm may hold spaces, the state follows the last ')'.
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs: %s", pid, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pids reads the pids a test command appended to path, one a line.
func pids(t *testing.T, path string) []int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pid file %s: %q", path, data)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		t.Fatalf("pid file %s is empty", path)
	}
	return out
}

func TestCommandExitZeroPasses(t *testing.T) {
	spec := Spec{Timeout: 5 * time.Second, Interval: MinInterval, Checks: []Check{cmdCheck("ok", time.Second, "/bin/sh", "-c", "echo fine")}}
	r := (&Checker{}).Run(context.Background(), spec, nil, nil)
	if !r.Passed || r.Results[0].Attempts != 1 || !strings.Contains(r.Results[0].Message, "status 0") {
		t.Fatalf("report = %+v", r)
	}
}

func TestCommandExitOneFailsWithItsLastOutput(t *testing.T) {
	script := `i=0; while [ $i -lt 20 ]; do echo "noise $i"; i=$((i+1)); done; echo "db unreachable" >&2; exit 3`
	spec := Spec{Timeout: 500 * time.Millisecond, Interval: MinInterval, Checks: []Check{cmdCheck("db", 200*time.Millisecond, "/bin/sh", "-c", script)}}
	r := (&Checker{}).Run(context.Background(), spec, nil, nil)
	res := r.Results[0]
	if r.Passed || r.FirstFailure != "db" || res.Attempts < 2 {
		t.Fatalf("report = %+v", r)
	}
	for _, want := range []string{"sh exited with status 3", "noise 19", "db unreachable", "did not pass within 500ms"} {
		if !strings.Contains(res.Message, want) {
			t.Errorf("message %q does not say %q", res.Message, want)
		}
	}
	if strings.Contains(res.Message, "noise 10") {
		t.Errorf("message %q has more than the last lines", res.Message)
	}
	if f := r.Failure(); !strings.HasPrefix(f, "health check db failed: ") {
		t.Errorf("Failure() = %q", f)
	}
}

func TestCommandHangingIsKilledAtItsTimeoutWithItsChildren(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pids")
	script := `echo $$ >> "$0"; sleep 300 & echo $! >> "$0"; echo started; wait`
	cc := &CommandCheck{Argv: []string{"/bin/sh", "-c", script, pidFile}, Timeout: 300 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ok, msg := (&Checker{}).checkCommand(ctx, cc)
	if ok || !strings.Contains(msg, "did not exit within its timeout of 300ms and was killed") || !strings.Contains(msg, "started") {
		t.Fatalf("ok=%v msg=%q", ok, msg)
	}
	if ctx.Err() != nil {
		t.Fatal("the check outlived its own timeout by far")
	}
	for _, pid := range pids(t, pidFile) {
		gone(t, pid)
	}
}

// A command that backgrounds a process and exits must neither leave it running nor
// make the check wait for it (it holds the output pipe).
func TestCommandLeavesNoProcessBehind(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pids")
	script := `sleep 300 & echo $! >> "$0"; exit 0`
	cc := &CommandCheck{Argv: []string{"/bin/sh", "-c", script, pidFile}, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ok, msg := (&Checker{}).checkCommand(ctx, cc); !ok {
		t.Fatalf("failed: %s", msg)
	}
	if ctx.Err() != nil {
		t.Fatal("the check waited for its background process")
	}
	for _, pid := range pids(t, pidFile) {
		gone(t, pid)
	}
}

func TestCommandStoppedAtTheOverallDeadline(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pids")
	script := `echo $$ >> "$0"; exec sleep 300`
	spec := Spec{Timeout: 400 * time.Millisecond, Interval: MinInterval,
		Checks: []Check{cmdCheck("slow", 400*time.Millisecond, "/bin/sh", "-c", script, pidFile)}}
	if err := Validate(spec, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := (&Checker{}).Run(ctx, spec, nil, nil)
	if ctx.Err() != nil {
		t.Fatal("Run outlived its overall deadline by far")
	}
	if r.Passed || r.Results[0].Attempts != 1 || !strings.Contains(r.Results[0].Message, "killed") {
		t.Fatalf("report = %+v", r)
	}
	for _, pid := range pids(t, pidFile) {
		gone(t, pid)
	}
}

func TestCommandThatCannotStart(t *testing.T) {
	cc := &CommandCheck{Argv: []string{filepath.Join(t.TempDir(), "missing")}, Timeout: time.Second}
	ok, msg := (&Checker{}).checkCommand(context.Background(), cc)
	if ok || !strings.Contains(msg, "missing") {
		t.Fatalf("ok=%v msg=%q", ok, msg)
	}
}

// fakeSystemd writes systemd-run and systemctl stand-ins into a directory: both
// append their arguments (one a line, then "--end--") to <name>.args beside them,
// and systemd-run then runs what follows "--" — in the caller's process group, as
// a real transient unit would not be.
func fakeSystemd(t *testing.T) (dir string) {
	t.Helper()
	dir = t.TempDir()
	record := `printf '%s\n' "$@" --end-- >> "$0.args"` + "\n"
	scripts := map[string]string{
		"systemd-run": record + `while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done; shift; exec "$@"`,
		"systemctl":   record,
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// calls reads a stand-in's recorded invocations.
func calls(t *testing.T, path string) [][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	var cur []string
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if l == "--end--" {
			out = append(out, cur)
			cur = nil
			continue
		}
		cur = append(cur, l)
	}
	return out
}

func TestSystemdRunnerRunsTheCommandInATransientUnit(t *testing.T) {
	dir := fakeSystemd(t)
	r := SystemdRunner{SystemdRun: filepath.Join(dir, "systemd-run"), Systemctl: filepath.Join(dir, "systemctl")}
	c := &Checker{Runner: r}
	ok, msg := c.checkCommand(context.Background(), &CommandCheck{Argv: []string{"/bin/sh", "-c", "echo from-the-unit; exit 4"}, Timeout: 5 * time.Second})
	if ok || !strings.Contains(msg, "status 4") || !strings.Contains(msg, "from-the-unit") {
		t.Fatalf("ok=%v msg=%q", ok, msg)
	}
	got := calls(t, filepath.Join(dir, "systemd-run.args"))
	if len(got) != 1 {
		t.Fatalf("systemd-run calls = %q", got)
	}
	args := got[0]
	sep := slices.Index(args, "--")
	if sep < 0 || !slices.Equal(args[sep+1:], []string{"/bin/sh", "-c", "echo from-the-unit; exit 4"}) {
		t.Fatalf("systemd-run %q does not end in -- and the command", args)
	}
	for _, want := range []string{"--pipe", "--wait", "--collect", "--quiet", "--no-ask-password", "--service-type=exec"} {
		if !slices.Contains(args[:sep], want) {
			t.Errorf("systemd-run %q lacks %s", args, want)
		}
	}
	if !slices.ContainsFunc(args[:sep], func(a string) bool { return strings.HasPrefix(a, "--unit=nio-health-") }) {
		t.Errorf("systemd-run %q names no unit", args)
	}
	if !slices.ContainsFunc(args[:sep], func(a string) bool {
		ms, ok := strings.CutPrefix(a, "--property=RuntimeMaxSec=")
		n, err := strconv.Atoi(strings.TrimSuffix(ms, "ms"))
		return ok && err == nil && n > 4000 && n <= 5000
	}) {
		t.Errorf("systemd-run %q does not bound the unit's run time by the check's timeout", args)
	}
	if got := calls(t, filepath.Join(dir, "systemctl.args")); got != nil {
		t.Errorf("a command that ended was stopped anyway: %q", got)
	}
}

func TestSystemdRunnerStopsTheUnitAtTheTimeout(t *testing.T) {
	dir := fakeSystemd(t)
	c := &Checker{Runner: SystemdRunner{SystemdRun: filepath.Join(dir, "systemd-run"), Systemctl: filepath.Join(dir, "systemctl")}}
	ok, msg := c.checkCommand(context.Background(), &CommandCheck{Argv: []string{"/bin/sleep", "300"}, Timeout: 200 * time.Millisecond})
	if ok || !strings.Contains(msg, "timeout of 200ms") {
		t.Fatalf("ok=%v msg=%q", ok, msg)
	}
	var unit string
	for _, a := range calls(t, filepath.Join(dir, "systemd-run.args"))[0] {
		if u, ok := strings.CutPrefix(a, "--unit="); ok {
			unit = u
		}
	}
	stops := calls(t, filepath.Join(dir, "systemctl.args"))
	if len(stops) != 1 || !slices.Equal(stops[0], []string{"kill", "--signal=SIGKILL", "--", unit}) {
		t.Fatalf("systemctl calls = %q, want one kill of %s", stops, unit)
	}
}
