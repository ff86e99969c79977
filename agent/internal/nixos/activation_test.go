package nixos

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeSystem makes a store-path-like directory whose bin/switch-to-configuration is
// script (a /bin/sh body; $1 is the action).
func fakeSystem(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "switch-to-configuration"), []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestActivateRecordsTheScriptsExitStatusAndStreamsItsOutput(t *testing.T) {
	h := NewHost(Config{})
	sys := fakeSystem(t, `echo "activating $1"; echo "a warning" >&2; exit 4`)
	a := Activation{Unit: "nio-activate-test-1", Dir: t.TempDir()}
	var l lines
	err := h.Activate(context.Background(), sys, "switch", a, l.add)
	if err == nil || !strings.Contains(err.Error(), "exited with status 4") {
		t.Fatalf("Activate = %v, want the script's status 4", err)
	}
	for _, want := range []string{"out:activating switch", "out:a warning"} {
		if !strings.Contains(l.joined(), want) {
			t.Errorf("missing %q in\n%s", want, l.joined())
		}
	}
	if data, _ := os.ReadFile(a.StatusPath()); string(data) != "4\n" {
		t.Errorf("status file %q, want \"4\\n\"", data)
	}

	ok := Activation{Unit: "nio-activate-test-2", Dir: a.Dir}
	if err := h.Activate(context.Background(), fakeSystem(t, "exit 0"), "test", ok, l.add); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitActivation(context.Background(), ok, l.add); err != nil {
		t.Errorf("WaitActivation of an ended, successful activation = %v", err)
	}
}

func TestActivationArgumentsAreNeverParsedByTheShell(t *testing.T) {
	h := NewHost(Config{})
	sys := fakeSystem(t, `printf '%s\n' "$1"`)
	a := Activation{Unit: "nio-activate-quote", Dir: filepath.Join(t.TempDir(), "dir with $(touch pwned) 'quotes'")}
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var l lines
	if err := h.Activate(context.Background(), sys, "dry-activate; touch pwned", a, l.add); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(l.joined(), "out:dry-activate; touch pwned") {
		t.Errorf("the action did not arrive as one argument:\n%s", l.joined())
	}
	if _, err := os.Stat("pwned"); err == nil {
		os.Remove("pwned")
		t.Fatal("a value was run as shell code")
	}
}

func TestWaitActivationWaitsForAnActivationThatOutlivedItsAgent(t *testing.T) {
	dir := t.TempDir()
	release := filepath.Join(dir, "release")
	sys := fakeSystem(t, `while [ ! -e "`+release+`" ]; do sleep 0.05; done; echo "ended after release"; exit 3`)
	a := Activation{Unit: "nio-activate-outlived", Dir: dir}
	started := NewHost(Config{})
	go started.Activate(context.Background(), sys, "switch", a, func(Stream, string) {}) // the agent that "dies"

	// The restarted agent (seconds later, in life): the wrapper's pid is recorded
	// and alive, no status yet.
	restarted := NewHost(Config{PollInterval: 20 * time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for {
		running, err := restarted.activationRunning(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		if running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the wrapper never showed as running")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var l lines
	waited := make(chan error, 1)
	go func() { waited <- restarted.WaitActivation(context.Background(), a, l.add) }()
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := <-waited
	if err == nil || !strings.Contains(err.Error(), "exited with status 3") {
		t.Fatalf("WaitActivation = %v, want status 3", err)
	}
	if !strings.Contains(l.joined(), "out:ended after release") {
		t.Errorf("the activation's output was not followed:\n%s", l.joined())
	}
}

func TestWaitActivationOfAnActivationThatLeftNoStatusIsAnError(t *testing.T) {
	a := Activation{Unit: "nio-activate-lost", Dir: t.TempDir()}
	// A pid that is not our wrapper (this test process).
	if err := os.WriteFile(a.pidPath(), []byte("1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := NewHost(Config{PollInterval: time.Millisecond}).WaitActivation(context.Background(), a, func(Stream, string) {})
	if err == nil || !strings.Contains(err.Error(), "recorded no exit status") {
		t.Fatalf("WaitActivation = %v, want an error naming the missing status", err)
	}
}

// stubSystemd puts systemd-run and systemctl stand-ins first on PATH: systemd-run
// records its arguments and runs the command after "--" with output appended to
// the StandardOutput file; systemctl is-active answers "active" while
// <dir>/running exists. Every call is logged to <dir>/calls.
func stubSystemd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("systemd-run", `printf '%s\n' "systemd-run $*" >> "`+dir+`/calls"
log=
while [ "$1" != "--" ]; do
  case "$1" in --property=StandardOutput=append:*) log="${1#--property=StandardOutput=append:}";; esac
  shift
done
shift
exec "$@" >> "$log" 2>&1`)
	write("systemctl", `printf '%s\n' "systemctl $*" >> "`+dir+`/calls"
if [ -e "`+dir+`/running" ]; then echo active; exit 0; fi
echo inactive; exit 3`)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return dir
}

func TestSystemdRunActivationNamesItsUnitAndIsPolledThroughSystemctl(t *testing.T) {
	stub := stubSystemd(t)
	h := NewHost(Config{SystemdRun: true, PollInterval: 10 * time.Millisecond})
	a := Activation{Unit: "nio-activate-abc-1", Dir: t.TempDir()}
	var l lines
	if err := h.Activate(context.Background(), fakeSystem(t, `echo "switched"`), "switch", a, l.add); err != nil {
		t.Fatalf("Activate: %v\n%s", err, l.joined())
	}
	calls, _ := os.ReadFile(filepath.Join(stub, "calls"))
	for _, want := range []string{"--unit=nio-activate-abc-1", "--collect", "--wait", "--service-type=exec", "-- /bin/sh -c "} {
		if !strings.Contains(string(calls), want) {
			t.Errorf("systemd-run call lacks %q: %s", want, calls)
		}
	}
	if !strings.Contains(l.joined(), "out:switched") {
		t.Errorf("output not followed:\n%s", l.joined())
	}

	// An activation an earlier agent started: running until systemd says it is
	// not, then its recorded status counts.
	later := Activation{Unit: "nio-activate-abc-2", Dir: a.Dir}
	if err := os.WriteFile(filepath.Join(stub, "running"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- h.WaitActivation(context.Background(), later, l.add) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readFile(t, filepath.Join(stub, "calls")), "systemctl is-active nio-activate-abc-2") {
		if time.Now().After(deadline) {
			t.Fatal("WaitActivation never asked systemd")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile(later.StatusPath(), []byte("0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("WaitActivation = %v", err)
	}

	// Not running, no status: an error, not a success.
	os.Remove(filepath.Join(stub, "running"))
	if err := h.WaitActivation(context.Background(), Activation{Unit: "nio-activate-abc-3", Dir: a.Dir}, l.add); err == nil {
		t.Fatal("an activation with no status and no unit counted as a success")
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(data)
}
