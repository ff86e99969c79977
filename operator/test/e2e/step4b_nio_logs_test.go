//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/nixtest"
)

// (Before step 5, which deletes worker-config.)
//
// nio logs -f follows a real build on the demo host to its end, each line prefixed
// by its phase, as a user who may get the configuration; a user without RBAC in
// that namespace is refused and sees nothing.
func TestNioLogsFollowsARealBuildAndRefusesAUserWithoutRBAC(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 4*time.Minute)

	commit, err := stack.Git.CommitFixture("basic", map[string]string{nixtest.VarVersion: "logs"}, "worker: followed by nio logs")
	if err != nil {
		t.Fatal(err)
	}
	run, err := stack.FollowBuildLog(ctx, commit)
	if err != nil {
		t.Fatal(err)
	}
	if run.Code != 0 {
		t.Fatalf("nio logs -f: exit %d:\n%s", run.Code, run.Output)
	}
	for _, want := range []string{" of " + commit[:12] + ",", "== Building", "[Building] ", "== Succeeded"} {
		if !strings.Contains(run.Output, want) {
			t.Errorf("nio logs -f output lacks %q:\n%s", want, run.Output)
		}
	}
	if err := stack.WaitApplied(ctx, commit); err != nil {
		t.Fatal(err)
	}

	stranger, err := stack.UserKubeconfig(ctx, harness.GuideNamespace, "mallory", false)
	if err != nil {
		t.Fatal(err)
	}
	refused, err := stack.Nio(ctx, stranger, "logs", harness.GuideConfiguration, "-n", harness.GuideNamespace)
	if err != nil {
		t.Fatal(err)
	}
	if refused.Code != 4 || strings.Contains(refused.Output, "[Building]") {
		t.Fatalf("a user without RBAC: exit %d, want 4 and no log:\n%s", refused.Code, refused.Output)
	}
}
