//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/nixtest"
)

// Killing the operator (SIGKILL) during a long build and starting it again attaches
// to the running operation: the host builds and activates the commit once, and the
// status ends with that commit applied.
func TestOperatorKilledDuringBuildBuildsOnce(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 5*time.Minute)

	// A version never built before on this machine: the store would otherwise hold
	// the system already and the build would not take its 12 seconds.
	version := fmt.Sprintf("restart-%d", time.Now().UnixNano())
	commit, err := stack.Git.CommitFixture("sleep", map[string]string{nixtest.VarVersion: version, nixtest.VarSleep: "12"}, "worker: a slow build")
	if err != nil {
		t.Fatal(err)
	}
	// The build is running when the agent has started the operation and the
	// configuration records it as in flight.
	var op string
	err = harness.WaitFor(ctx, "the agent starts the slow build", 2*time.Minute, func() (bool, string, error) {
		if agentLog(t, "operation start", "commit", commit) == 0 {
			return false, "no operation start in the agent log", nil
		}
		c := configuration(t, ctx)
		if c.Status.CurrentOperation == nil {
			return false, "no currentOperation", nil
		}
		op = c.Status.CurrentOperation.ID
		return true, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stack.Operator.Kill()
	if agentLog(t, "operation done", "operation", op) != 0 {
		t.Fatalf("operation %s ended before the operator was killed: the build was not slow enough to test a restart", op)
	}
	if err := stack.Operator.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := stack.WaitApplied(ctx, commit); err != nil {
		t.Fatal(err)
	}

	if n := agentLog(t, "operation start", "commit", commit); n != 1 {
		t.Errorf("the agent started %d operations for %s, want 1", n, commit)
	}
	if agentLog(t, "attach", "operation", op) == 0 {
		t.Errorf("the restarted operator did not attach to operation %s (no attach in the agent log)", op)
	}
	acts, err := stack.Host.Activations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sleepy := 0
	for _, a := range acts {
		if strings.HasSuffix(a, "-nixos-system-sleepy-"+version) {
			sleepy++
		}
	}
	if sleepy != 1 {
		t.Errorf("the slow system was activated %d times, want 1; activations:\n%s", sleepy, strings.Join(acts, "\n"))
	}
	conf := configuration(t, ctx)
	if conf.Status.AppliedCommit != commit || conf.Status.CurrentOperation != nil {
		t.Errorf("configuration status: appliedCommit=%q currentOperation=%+v; want %q and none", conf.Status.AppliedCommit, conf.Status.CurrentOperation, commit)
	}
	if len(conf.Status.History) == 0 || conf.Status.History[0].Commit != commit || conf.Status.History[0].Result != nio.ResultSucceeded {
		t.Errorf("newest history entry = %+v, want %s succeeded", conf.Status.History, commit)
	}
}

// agentLog counts the agent's JSON log entries with message msg and attribute key
// equal to value.
func agentLog(t *testing.T, msg, key, value string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(stack.Host.Agent().Log(), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		if e["msg"] == msg && e[key] == value {
			n++
		}
	}
	return n
}
