//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/test/harness"
)

// The usage guide's steps, with the real kubectl, reach what "Monitoring Status"
// promises — read from `kubectl get machine worker-01 -o yaml` itself — and the host
// runs the applied system.
func TestUsageGuideAppliesTheServersHead(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 2*time.Minute)

	head, err := stack.Git.Head()
	if err != nil {
		t.Fatal(err)
	}
	var m nio.Machine
	if err := yaml.Unmarshal([]byte(kubectl(t, ctx, "get", "machine", harness.GuideMachine, "-o", "yaml")), &m); err != nil {
		t.Fatalf("kubectl get machine -o yaml: %v", err)
	}
	st := m.Status
	if !st.HasConfiguration || st.AppliedConfiguration != harness.GuideConfiguration || st.LastAppliedTime == nil {
		t.Errorf("Machine status: hasConfiguration=%v appliedConfiguration=%q lastAppliedTime=%v; want true, %q, set",
			st.HasConfiguration, st.AppliedConfiguration, st.LastAppliedTime, harness.GuideConfiguration)
	}
	if st.AppliedCommit != head {
		t.Errorf("appliedCommit = %q, want the git server's HEAD %q", st.AppliedCommit, head)
	}
	if st.Agent == nil || !st.Agent.Connected {
		t.Errorf("Machine status agent = %+v, want connected (identity delivered over SSH)", st.Agent)
	}

	conf, err := stack.Control.Configuration(ctx, harness.GuideNamespace, harness.GuideConfiguration)
	if err != nil {
		t.Fatal(err)
	}
	if len(conf.Status.History) == 0 || conf.Status.History[0].Transport != nio.TransportAgent || conf.Status.History[0].Commit != head {
		t.Errorf("history = %+v, want the newest entry to be %s via agent", conf.Status.History, head)
	}
	current, err := stack.Host.CurrentSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if current == "" || current != conf.Status.AppliedSystem || !strings.Contains(current, "nixos-system-worker-") {
		t.Errorf("host /run/current-system = %q, want the applied system %q", current, conf.Status.AppliedSystem)
	}
	events := kubectl(t, ctx, "get", "events", "--field-selector", "involvedObject.name="+harness.GuideConfiguration)
	if !strings.Contains(events, "Applied") || !strings.Contains(events, head) {
		t.Errorf("kubectl get events does not show the apply of %s:\n%s", head, events)
	}
}
