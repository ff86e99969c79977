//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/nixtest"
)

// A push is applied with no manual step (the configuration polls every 5s), and the
// events say so.
func TestPushIsAppliedWithoutAManualStep(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 4*time.Minute)

	commit, err := stack.Git.CommitFixture("basic", map[string]string{nixtest.VarVersion: "push"}, "worker: pushed")
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.WaitApplied(ctx, commit); err != nil {
		t.Fatal(err)
	}
	events := kubectl(t, ctx, "get", "events", "--field-selector", "involvedObject.name="+harness.GuideConfiguration)
	if !strings.Contains(events, "main@sha1:"+commit) {
		t.Errorf("kubectl get events does not name the pushed revision main@sha1:%s:\n%s", commit, events)
	}
	current, err := stack.Host.CurrentSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(current, "-nixos-system-worker-push") {
		t.Errorf("host /run/current-system = %q, want the pushed system (…-nixos-system-worker-push)", current)
	}
}
