package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// standIn is a recording nixos-anywhere: it writes down its argv (NUL-separated), the
// modes of the key file, work directory and extra-files tree it was handed, copies
// of the key and marker, writes the facter report when asked, prints interleaved
// stdout/stderr lines, and exits with $NIO_TEST_EXIT. With NIO_TEST_HANG it starts a
// child, reports its pid, ignores SIGTERM and waits forever, to test the kill path.
const standIn = `#!/bin/sh
set -eu
rec="$NIO_TEST_RECORD"
printf '%s\0' "$@" > "$rec/argv"
key= extra= report=
while [ $# -gt 0 ]; do
  case "$1" in
    -i) key=$2; shift ;;
    --extra-files) extra=$2; shift ;;
    --generate-hardware-config) report=$3; shift 2 ;;
  esac
  shift
done
stat -c '%a' "$key" > "$rec/key.mode"
stat -c '%a' "$(dirname "$key")" > "$rec/work.mode"
cat "$key" > "$rec/key"
(cd "$extra" && find . -printf '%m %y %p\n' | sort -k3) > "$rec/tree"
cat "$extra/var/lib/nio/installed" > "$rec/marker"
printf '%s' "$TMPDIR" > "$rec/tmpdir"
echo scratch > "$TMPDIR/scratch"
if [ -n "$report" ]; then printf '{"version":1}' > "$report"; fi
if [ -n "${NIO_TEST_HANG:-}" ]; then
  trap '' TERM
  sleep 1000 &
  echo "child $!"
  wait
fi
for i in 1 2 3; do
  echo "out $i"
  echo "err $i" >&2
done
printf 'last line without newline'
exit "${NIO_TEST_EXIT:-0}"
`

type fixture struct {
	runner *Runner
	record string // where the stand-in records
	temp   string // the runner's TempDir
	req    Request
}

func newFixture(t *testing.T, env ...string) *fixture {
	t.Helper()
	base := t.TempDir()
	bin := filepath.Join(base, "bin", "nixos-anywhere")
	record := filepath.Join(base, "record")
	// A space in the work directory's path proves the arguments travel as a list.
	temp := filepath.Join(base, "work dir")
	src := filepath.Join(base, "src")
	for _, d := range []string{filepath.Dir(bin), record, temp, src} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(bin, []byte(standIn), 0o755); err != nil {
		t.Fatal(err)
	}
	return &fixture{
		runner: &Runner{
			Binary:  bin,
			TempDir: temp,
			Env:     append([]string{"NIO_TEST_RECORD=" + record}, env...),
			Now:     func() time.Time { return time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC) },
		},
		record: record,
		temp:   temp,
		req: Request{
			Namespace: "default", Machine: "worker-1", Configuration: "worker-1-config",
			Commit:    "0123456789abcdef0123456789abcdef01234567",
			SourceDir: src, FlakeDir: ".", FlakeAttr: "worker",
			User: "root", Host: "192.168.1.50", Port: 22,
			SSHPrivateKey: []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"),
			AgentTLS:      AgentTLS{CA: []byte("ca\n"), Cert: []byte("cert\n"), Key: []byte("key\n")},
			KexecURL:      "https://example.com/kexec.tar.gz",
		},
	}
}

func (f *fixture) recorded(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.record, name))
	if err != nil {
		t.Fatalf("the stand-in did not record %s: %v", name, err)
	}
	return string(b)
}

// assertNoTempFiles checks that nothing the run wrote (keys!) outlives it.
func (f *fixture) assertNoTempFiles(t *testing.T) {
	t.Helper()
	left, err := os.ReadDir(f.temp)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("temporary files left behind in %s: %v", f.temp, left)
	}
}

func TestRunnerPassesArgvAndFilesAndStreamsOutput(t *testing.T) {
	f := newFixture(t)
	var lines []string
	f.req.OnLine = func(l string) { lines = append(lines, l) }
	f.req.FacterReportPath = "facter.json"

	res, err := f.runner.Run(context.Background(), f.req)
	if err != nil {
		t.Fatalf("Run: %v (log %q)", err, res.LogTail)
	}

	// The argv arrived exactly, element by element.
	argv := strings.Split(strings.TrimSuffix(f.recorded(t, "argv"), "\x00"), "\x00")
	if !slices.Equal(argv, res.Args) {
		t.Errorf("stand-in argv\n%q\nResult.Args\n%q", argv, res.Args)
	}
	keyFile := argv[slices.Index(argv, "-i")+1]
	extraDir := argv[slices.Index(argv, "--extra-files")+1]
	want, err := Invocation{
		SourceDir: f.req.SourceDir, FlakeDir: ".", FlakeAttr: "worker", Namespace: "default", Machine: "worker-1",
		User: "root", Host: "192.168.1.50", Port: 22, IdentityFile: keyFile, ExtraFilesDir: extraDir,
		KexecURL: f.req.KexecURL, GenerateFacterReport: "facter.json",
	}.Args()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(argv, want) {
		t.Errorf("argv\n%q\nwant\n%q", argv, want)
	}
	if !strings.HasPrefix(keyFile, f.temp+string(filepath.Separator)) || !strings.HasPrefix(extraDir, f.temp+string(filepath.Separator)) {
		t.Errorf("key %s / extra files %s not in the runner's TempDir %s", keyFile, extraDir, f.temp)
	}

	if got := f.recorded(t, "tmpdir"); filepath.Dir(got) != filepath.Dir(keyFile) {
		t.Errorf("TMPDIR %s is not inside the work directory %s", got, filepath.Dir(keyFile))
	}

	// While it ran: the key and its directory were private, the tree complete.
	if got := f.recorded(t, "key.mode"); got != "600\n" {
		t.Errorf("key file mode %q, want 600", got)
	}
	if got := f.recorded(t, "work.mode"); got != "700\n" {
		t.Errorf("work dir mode %q, want 700", got)
	}
	if got := f.recorded(t, "key"); got != string(f.req.SSHPrivateKey) {
		t.Error("key file content differs from the request's key")
	}
	golden(t, "runner-tree", f.recorded(t, "tree"))
	if got, want := f.recorded(t, "marker"), "{\n  \"machine\": \"worker-1\",\n  \"namespace\": \"default\",\n  \"configuration\": \"worker-1-config\",\n  \"commit\": \"0123456789abcdef0123456789abcdef01234567\",\n  \"time\": \"2026-11-28T06:00:00Z\"\n}\n"; got != want {
		t.Errorf("marker\n%s\nwant\n%s", got, want)
	}

	// Output: every line, in the order written, stdout and stderr merged.
	wantLines := []string{"out 1", "err 1", "out 2", "err 2", "out 3", "err 3", "last line without newline"}
	if !slices.Equal(lines, wantLines) {
		t.Errorf("lines %q, want %q", lines, wantLines)
	}
	if !slices.Equal(res.LogTail, wantLines) {
		t.Errorf("log tail %q, want %q", res.LogTail, wantLines)
	}

	if !strings.HasPrefix(res.HostPublicKey, "ssh-ed25519 ") {
		t.Errorf("host public key %q", res.HostPublicKey)
	}
	if string(res.FacterReport) != `{"version":1}` {
		t.Errorf("facter report %q, want what the stand-in wrote", res.FacterReport)
	}
	if res.ExitCode != 0 {
		t.Errorf("exit code %d", res.ExitCode)
	}
	f.assertNoTempFiles(t)
}

// A report that is already in the source is used as is, never collected again.
func TestRunnerDoesNotAskForAFacterReportThatExists(t *testing.T) {
	f := newFixture(t)
	if err := os.WriteFile(filepath.Join(f.req.SourceDir, "facter.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.req.FacterReportPath = "facter.json"
	res, err := f.runner.Run(context.Background(), f.req)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(res.Args, "--generate-hardware-config") {
		t.Errorf("args %q ask for a facter report that exists", res.Args)
	}
	if res.FacterReport != nil {
		t.Error("FacterReport set although nixos-anywhere did not collect one")
	}
}

func TestRunnerReportsFailureAndStillRemovesKeys(t *testing.T) {
	f := newFixture(t, "NIO_TEST_EXIT=3")
	res, err := f.runner.Run(context.Background(), f.req)
	if err == nil || !strings.Contains(err.Error(), "status 3") {
		t.Fatalf("Run: %v, want exit status 3", err)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", res.ExitCode)
	}
	if len(res.LogTail) == 0 || res.LogTail[len(res.LogTail)-1] != "last line without newline" {
		t.Errorf("log tail %q lacks the output", res.LogTail)
	}
	if strings.Contains(err.Error(), "not-a-real-key") {
		t.Error("error leaks the ssh key")
	}
	f.assertNoTempFiles(t)
}

func TestRunnerMissingBinaryIsAnErrorAndLeavesNothing(t *testing.T) {
	f := newFixture(t)
	f.runner.Binary = filepath.Join(t.TempDir(), "no-such-nixos-anywhere")
	res, err := f.runner.Run(context.Background(), f.req)
	if err == nil {
		t.Fatal("Run with a missing binary succeeded")
	}
	if res.ExitCode != -1 {
		t.Errorf("exit code %d for a process that never started, want -1", res.ExitCode)
	}
	f.assertNoTempFiles(t)
}

// The stand-in ignores SIGTERM and has a child: on timeout the runner must escalate
// to SIGKILL and take the whole process group down, child included.
func TestRunnerTimeoutKillsTheProcessGroup(t *testing.T) {
	f := newFixture(t, "NIO_TEST_HANG=1")
	f.runner.Timeout = 500 * time.Millisecond
	f.runner.KillGrace = 100 * time.Millisecond
	child := watchChild(t, &f.req)

	_, err := f.runner.Run(context.Background(), f.req)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Run: %v, want ErrTimeout", err)
	}
	child.assertExited(t)
	f.assertNoTempFiles(t)
}

func TestRunnerCancelKillsTheProcessGroup(t *testing.T) {
	f := newFixture(t, "NIO_TEST_HANG=1")
	f.runner.KillGrace = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	child := watchChild(t, &f.req)
	child.onStart = cancel // cancel once the child is known to run

	_, err := f.runner.Run(ctx, f.req)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
	child.assertExited(t)
	f.assertNoTempFiles(t)
}

// childWatch holds a pidfd of the stand-in's background child, opened the moment
// the stand-in reports it, so its exit can be awaited without polling.
type childWatch struct {
	mu      sync.Mutex
	pidfd   int
	pid     int
	onStart func()
}

func watchChild(t *testing.T, req *Request) *childWatch {
	t.Helper()
	w := &childWatch{pidfd: -1}
	req.OnLine = func(line string) {
		pidText, ok := strings.CutPrefix(line, "child ")
		if !ok {
			return
		}
		pid, err := strconv.Atoi(pidText)
		if err != nil {
			t.Errorf("bad child line %q", line)
			return
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Errorf("pidfd_open %d: %v", pid, err)
			return
		}
		w.mu.Lock()
		w.pid, w.pidfd = pid, fd
		start := w.onStart
		w.mu.Unlock()
		if start != nil {
			start()
		}
	}
	t.Cleanup(func() {
		if w.pidfd >= 0 {
			unix.Close(w.pidfd)
		}
	})
	return w
}

// assertExited waits (bounded) for the child's pidfd to signal its exit.
func (w *childWatch) assertExited(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	fd, pid := w.pidfd, w.pid
	w.mu.Unlock()
	if fd < 0 {
		t.Fatal("the stand-in never reported its child")
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int((10 * time.Second).Milliseconds()))
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		_ = unix.Kill(pid, unix.SIGKILL)
		t.Fatalf("child %d still runs after Run returned: the process group was not killed", pid)
	}
}

func TestReadLinesSplitsOverlongLines(t *testing.T) {
	long := bytes.Repeat([]byte("x"), maxLineBytes+10)
	input := append(append([]byte("a\r\n"), long...), []byte("\nb")...)
	var got []string
	if err := readLines(bytes.NewReader(input), func(l string) { got = append(got, l) }); err != nil {
		t.Fatal(err)
	}
	want := []string{"a", strings.Repeat("x", maxLineBytes), "xxxxxxxxxx", "b"}
	if !slices.Equal(got, want) {
		t.Errorf("got %d lines %v, want %d", len(got), summarize(got), len(want))
	}
}

func summarize(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = fmt.Sprintf("%d bytes", len(l))
	}
	return out
}
