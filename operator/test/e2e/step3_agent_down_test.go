//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/nixtest"
)

// With the agent process dead the next commit goes over SSH (nixos-rebuild on the
// host); once the agent runs again, applies go back to it.
func TestAgentDownFallsBackToSSHAndBack(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 5*time.Minute)
	agent := stack.Host.Agent()

	agent.Kill()
	t.Cleanup(func() {
		if !agent.Running() {
			_ = agent.Start(context.Background())
		}
	})
	viaSSH := pushAndWait(t, ctx, "agent-down")
	assertTransport(t, ctx, viaSSH, nio.TransportSSH)

	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	viaAgent := pushAndWait(t, ctx, "agent-back")
	assertTransport(t, ctx, viaAgent, nio.TransportAgent)
}

func pushAndWait(t *testing.T, ctx context.Context, version string) string {
	t.Helper()
	commit, err := stack.Git.CommitFixture("basic", map[string]string{nixtest.VarVersion: version}, "worker: "+version)
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.WaitApplied(ctx, commit); err != nil {
		t.Fatal(err)
	}
	return commit
}

// assertTransport checks the history entry of commit and that the host runs it.
func assertTransport(t *testing.T, ctx context.Context, commit string, want nio.Transport) {
	t.Helper()
	conf := configuration(t, ctx)
	var entry *nio.HistoryEntry
	for i := range conf.Status.History {
		if h := &conf.Status.History[i]; h.Commit == commit && h.Result == nio.ResultSucceeded {
			entry = h
			break
		}
	}
	if entry == nil {
		t.Fatalf("no succeeded history entry for %s: %+v", commit, conf.Status.History)
	}
	if entry.Transport != want {
		t.Errorf("commit %s applied via %q, want %q", commit, entry.Transport, want)
	}
	current, err := stack.Host.CurrentSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if current != conf.Status.AppliedSystem {
		t.Errorf("host /run/current-system = %q, want the applied system %q", current, conf.Status.AppliedSystem)
	}
}
