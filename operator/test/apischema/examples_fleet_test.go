package apischema

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// TestFleetExampleAppliesWithDefaults applies examples/fleet.yaml with the real
// kubectl — the API server must accept every object of it — and reads back what the
// fleet says: its selector takes the three web Machines, the strategy and health
// checks the example sets, and the defaults the API server fills in.
func TestFleetExampleAppliesWithDefaults(t *testing.T) {
	ns := newNamespace(t)
	kubectl(t, "apply", "-n", ns, "-f", filepath.Join(env.Root, "examples/fleet.yaml"))
	ctx := context.Background()

	var f nio.NixosFleet
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "web"}, &f); err != nil {
		t.Fatal(err)
	}
	sel, err := metav1.LabelSelectorAsSelector(&f.Spec.MachineSelector)
	if err != nil {
		t.Fatal(err)
	}
	var machines nio.MachineList
	if err := env.Client.List(ctx, &machines, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		t.Fatal(err)
	}
	var hostnames []string
	for _, m := range machines.Items {
		hostnames = append(hostnames, m.Spec.Hostname)
		if m.Spec.SSHKeySecretRef == nil || m.Spec.SSHKeySecretRef.Name != "worker-ssh-key" {
			t.Errorf("Machine %s: sshKeySecretRef %+v, want the usage guide's worker-ssh-key", m.Name, m.Spec.SSHKeySecretRef)
		}
	}
	slices.Sort(hostnames)
	if want := []string{"web-01", "web-02", "web-03"}; !slices.Equal(hostnames, want) {
		t.Errorf("the fleet's selector takes Machines with hostnames %v, want %v", hostnames, want)
	}

	tpl := f.Spec.Template
	if tpl.Flake != ".#{hostname}" || tpl.GitRepo != "https://github.com/your-org/nixos-configs.git" ||
		tpl.CredentialsRef == nil || tpl.CredentialsRef.Name != "git-credentials" {
		t.Errorf("template = %+v", tpl)
	}
	if tpl.Ref != "main" || tpl.Interval.Duration != 5*time.Minute || tpl.Action != nio.ActionSwitch ||
		tpl.Rollback.Enabled == nil || !*tpl.Rollback.Enabled || tpl.Timeout == nil || tpl.Timeout.Duration != time.Hour {
		t.Errorf("template defaults: ref=%q interval=%v action=%q rollback=%+v timeout=%v; want main 5m switch enabled 1h",
			tpl.Ref, tpl.Interval.Duration, tpl.Action, tpl.Rollback, tpl.Timeout)
	}
	hc := tpl.HealthChecks
	if hc == nil || len(hc.Checks) != 2 {
		t.Fatalf("healthChecks = %+v, want the nginx and web checks", hc)
	}
	if hc.Timeout == nil || hc.Timeout.Duration != 2*time.Minute || hc.Interval == nil || hc.Interval.Duration != time.Second {
		t.Errorf("healthChecks timeout %v interval %v, want 2m and the default 1s", hc.Timeout, hc.Interval)
	}
	units, web := hc.Checks[0].Units, hc.Checks[1].HTTP
	if units == nil || !slices.Equal(units.Names, []string{"nginx.service"}) || !units.NoNewFailures {
		t.Errorf("check %s = %+v, want nginx.service with noNewFailures", hc.Checks[0].Name, units)
	}
	if web == nil || web.URL != "http://127.0.0.1/" || web.ExpectStatus != 200 {
		t.Errorf("check %s = %+v, want a GET of http://127.0.0.1/ expecting 200", hc.Checks[1].Name, web)
	}

	s := f.Spec.Strategy
	if s.Canary != 1 || !slices.Equal(s.Batches, []intstr.IntOrString{intstr.FromString("50%")}) || s.MaxParallel != 1 {
		t.Errorf("strategy sizes: canary %d batches %v maxParallel %d, want 1, [50%%], 1", s.Canary, s.Batches, s.MaxParallel)
	}
	if s.OnFailure != nio.FailureRevert || s.Promotion != nio.PromotionAutomatic || s.MaxUnavailable != nil || s.PauseBetweenBatches != nil || f.Spec.Paused {
		t.Errorf("strategy: onFailure %q promotion %q maxUnavailable %v pauseBetweenBatches %v paused %v; want Revert, the default Automatic, unset",
			s.OnFailure, s.Promotion, s.MaxUnavailable, s.PauseBetweenBatches, f.Spec.Paused)
	}

	// The short name and the printer columns work with kubectl.
	out := kubectl(t, "get", "nixfleet", "-n", ns)
	for _, col := range []string{"SELECTED", "UPDATED", "READY", "FAILED", "COMMIT", "PHASE", "web"} {
		if !strings.Contains(out, col) {
			t.Errorf("kubectl get nixfleet does not show %s:\n%s", col, out)
		}
	}
}

// TestReadmeFleetManifestIsAccepted: the README's NixosFleet reference manifest — every
// strategy field set — is one the API server accepts.
func TestReadmeFleetManifestIsAccepted(t *testing.T) {
	readme := string(readFile(t, "README.md"))
	start := strings.Index(readme, "\n### NixosFleet (`nixfleet`)\n")
	if start < 0 {
		t.Fatal("README.md has no section ### NixosFleet (`nixfleet`)")
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(readme[start:])
	if m == nil {
		t.Fatal("the README's NixosFleet section has no yaml block")
	}
	path := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(path, []byte(m[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	out := kubectl(t, "create", "--dry-run=server", "-n", newNamespace(t), "-o", "yaml", "-f", path)
	var f nio.NixosFleet
	if err := yaml.Unmarshal([]byte(out), &f); err != nil {
		t.Fatal(err)
	}
	s := f.Spec.Strategy
	if s.MaxUnavailable == nil || s.PauseBetweenBatches == nil || s.Promotion != nio.PromotionAutomatic || s.OnFailure != nio.FailureRevert {
		t.Errorf("the README's strategy read back as %+v", s)
	}
}
