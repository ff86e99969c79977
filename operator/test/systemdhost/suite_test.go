//go:build e2e

// Package systemdhost proves the host side where users run it: a host with real
// systemd as PID 1 (systemd 257) and a current Nix (2.26, with nix-daemon), running
// nio-agent as the systemd service the NixOS module defines — the unit is rendered
// from nix/agent-unit.json by testkit/agentunit, so this is the hardening a NixOS host
// runs. The host is harness.SystemdHost (a Debian trixie root under systemd-nspawn in
// a network namespace of its own); around it run the control plane with NIO installed
// by install.sh, the nio-operator binary as its ServiceAccount and git http-backend,
// as in the e2e suite.
//
// What is not real: the kernel (the host's), the boot loader (a oneshot unit points
// /run/booted-system at the profile at boot) and the NixOS systems (the systemd-host
// fixture flake: its switch-to-configuration does what NixOS's does, in small).
//
// The tests build on one another in the order of their files; each first makes sure
// the host was set up (Machine, configuration, first apply), so any one can run
// alone. Run with `make e2e` (as root) or `go test -tags e2e ./operator/test/systemdhost/`.
package systemdhost

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/agentunit"
)

// The names and settings of the suite's resources.
const (
	namespace     = "default"
	machineName   = "systemd-host"
	configName    = "systemd-config"
	sshSecret     = "systemd-host-ssh"
	gitSecret     = "systemd-git"
	confirmWindow = 20 * time.Second
	// stateDir is the agent's --state-dir: outside /var/lib on purpose, where the
	// unit can only work if the module makes the directory before the unit starts.
	stateDir = "/srv/nio-agent"
)

var (
	stack     *harness.Stack
	host      *harness.SystemdHost
	narration *os.File
	// beforeIdentity is what the agent's unit looked like after boot, before the
	// operator had delivered the agent's TLS identity.
	beforeIdentity unitState
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var err error
	narration, err = os.CreateTemp("", "nio-systemd-narration-*.log")
	if err != nil {
		fmt.Fprintln(os.Stderr, "systemdhost:", err)
		return 1
	}
	defer os.Remove(narration.Name())
	defer narration.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	err = up(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "systemdhost: start: %v\n%s\n%s", err, tail(narration.Name(), 60), logTails())
		if stack != nil {
			_ = stack.Down()
		}
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "systemdhost: interrupted; cleaning up")
		_ = stack.Down()
		os.Exit(1)
	}()
	code := m.Run()
	signal.Stop(sig)
	if err := stack.Down(); err != nil {
		fmt.Fprintln(os.Stderr, "systemdhost: clean up:", err)
		code = 1
	}
	return code
}

// up starts the stack and boots the host with the module's unit.
func up(ctx context.Context) error {
	var err error
	if stack, err = harness.UpWith(ctx, narration, harness.UpOptions{NoDemoHost: true}); err != nil {
		return err
	}
	unit, err := agentunit.Render(agentunit.Options{
		ExecPath:   harness.SystemdHostAgentBinary,
		FacterPath: harness.SystemdHostFacter,
		StateDir:   stateDir,
		LogLevel:   "debug",
		// What the module puts on PATH (nix, git, systemd, the facter), on Debian.
		Path: []string{"/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"},
	})
	if err != nil {
		return err
	}
	stack.Printf("\n== Booting the systemd test host (systemd-nspawn; nio-agent.service rendered from nix/agent-unit.json)\n%s\n", unit.Text)
	host, err = harness.StartSystemdHost(ctx, stack.Env, harness.SystemdHostOptions{
		Name: "systemd-host", AgentBinary: stack.Bin.Agent, InstallAgentUnit: unit.WriteTo,
	})
	if err != nil {
		return err
	}
	stack.Printf("systemd test host %s booted\n", host.Address)
	beforeIdentity, err = readUnitState(ctx)
	return err
}

// unitState is what systemd says of nio-agent.service.
type unitState struct {
	ActiveState, SubState, Result, NRestarts, ExecMainStatus, MainPID string
	Journal                                                           string
}

func readUnitState(ctx context.Context) (unitState, error) {
	var s unitState
	for prop, dst := range map[string]*string{
		"ActiveState": &s.ActiveState, "SubState": &s.SubState, "Result": &s.Result,
		"NRestarts": &s.NRestarts, "ExecMainStatus": &s.ExecMainStatus, "MainPID": &s.MainPID,
	} {
		v, err := host.UnitProperty(ctx, "nio-agent.service", prop)
		if err != nil {
			return s, err
		}
		*dst = v
	}
	var err error
	s.Journal, err = host.AgentJournal(ctx)
	return s, err
}

// testContext is a context for one test, with a report of the logs when it fails.
func testContext(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("narration (tail):\n%s\n%s", tail(narration.Name(), 40), logTails())
		}
	})
	return ctx
}

// logTails are the operator's log and the agent's journal, for a failure report.
func logTails() string {
	var b strings.Builder
	if stack != nil && stack.Operator != nil {
		if log, err := stack.Operator.Log(); err == nil {
			fmt.Fprintf(&b, "--- nio-operator (tail)\n%s\n", lastLines(log, 40))
		}
	}
	if host != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if j, err := host.AgentJournal(ctx); err == nil {
			fmt.Fprintf(&b, "--- journal of nio-agent.service (tail)\n%s\n", lastLines(j, 40))
		}
		fmt.Fprintf(&b, "--- host console (tail)\n%s\n", lastLines(host.ConsoleLog(), 15))
	}
	return b.String()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), n)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
