//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/nixtest"
)

// `kubectl delete nixosconfiguration worker-config` with onRemoveFlake switches the
// host to the removal system, clears the Machine's configuration fields, and only
// then lets the configuration go.
func TestDeleteAppliesOnRemoveFlakeAndClearsTheMachine(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 5*time.Minute)

	// A commit that has .#minimal (the slow fixture of an earlier test has not).
	commit, err := stack.Git.CommitFixture("basic", map[string]string{nixtest.VarVersion: "removal"}, "worker and minimal")
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.WaitApplied(ctx, commit); err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, "patch", "nixosconfiguration", harness.GuideConfiguration, "-n", harness.GuideNamespace,
		"--type", "merge", "-p", `{"spec":{"onRemoveFlake":".#minimal"}}`)
	out := kubectl(t, ctx, "delete", "nixosconfiguration", harness.GuideConfiguration, "-n", harness.GuideNamespace, "--timeout=4m")
	if !strings.Contains(out, "deleted") {
		t.Fatalf("kubectl delete: %s", out)
	}

	current, err := stack.Host.CurrentSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(current, "-nixos-system-minimal-removal") {
		t.Errorf("host /run/current-system = %q, want the removal system …-nixos-system-minimal-removal", current)
	}
	m, err := stack.Control.Machine(ctx, harness.GuideNamespace, harness.GuideMachine)
	if err != nil {
		t.Fatal(err)
	}
	if st := m.Status; st.HasConfiguration || st.AppliedConfiguration != "" || st.AppliedCommit != "" || st.LastAppliedTime != nil {
		t.Errorf("Machine status after removal: hasConfiguration=%v appliedConfiguration=%q appliedCommit=%q lastAppliedTime=%v; want all cleared",
			st.HasConfiguration, st.AppliedConfiguration, st.AppliedCommit, st.LastAppliedTime)
	}
	events := kubectl(t, ctx, "get", "events", "--field-selector", "involvedObject.name="+harness.GuideConfiguration)
	if !strings.Contains(events, "Removed") {
		t.Errorf("kubectl get events shows no Removed event:\n%s", events)
	}
}

// hostsMinimal is the guide's removal example, hosts/minimal.nix: a configuration
// module (not a flake), switched with nixos-rebuild -I nixos-config=<file> — here
// built through nixtest's stub <nixpkgs/nixos>.
const hostsMinimal = `{ ... }:
{
  networking.hostName = "minimal";
  nio.fixtureVersion = builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile ./version.txt);
}
`

// onRemoveFlake may name a module file (the guide's `hosts/minimal.nix`): deleting
// the configuration switches the host to the system that module builds.
func TestDeleteAppliesAModuleFileOnRemove(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 5*time.Minute)

	commit, err := stack.Git.CommitFixtureFiles("basic", map[string]string{nixtest.VarVersion: "module"},
		map[string]string{"hosts/minimal.nix": hostsMinimal, "hosts/version.txt": "module-removal\n"}, "add hosts/minimal.nix")
	if err != nil {
		t.Fatal(err)
	}
	// The guide's configuration again (an earlier test may have deleted it).
	kubectl(t, ctx, "apply", "-f", stack.Path("nixosconfiguration.yaml"))
	if err := stack.WaitApplied(ctx, commit); err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, "patch", "nixosconfiguration", harness.GuideConfiguration, "-n", harness.GuideNamespace,
		"--type", "merge", "-p", `{"spec":{"onRemoveFlake":"hosts/minimal.nix"}}`)
	kubectl(t, ctx, "delete", "nixosconfiguration", harness.GuideConfiguration, "-n", harness.GuideNamespace, "--timeout=4m")

	current, err := stack.Host.CurrentSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(current, "-nixos-system-minimal-module-removal") {
		t.Errorf("host /run/current-system = %q, want the module's system …-nixos-system-minimal-module-removal", current)
	}
	m, err := stack.Control.Machine(ctx, harness.GuideNamespace, harness.GuideMachine)
	if err != nil {
		t.Fatal(err)
	}
	if m.Status.HasConfiguration || m.Status.AppliedCommit != "" {
		t.Errorf("Machine status after removal: hasConfiguration=%v appliedCommit=%q; want cleared", m.Status.HasConfiguration, m.Status.AppliedCommit)
	}
}
