package apischema

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

func ptr[T any](v T) *T { return &v }

func validMachine() *nio.Machine {
	return &nio.Machine{Spec: nio.MachineSpec{
		Hostname:        "worker-01",
		IPAddress:       "192.168.1.100",
		SSHKeySecretRef: &nio.SSHKeySecretReference{Name: "worker-ssh-key"},
	}}
}

func validConfiguration() *nio.NixosConfiguration {
	return &nio.NixosConfiguration{Spec: nio.NixosConfigurationSpec{
		Flake:                 ".#worker",
		MachineRef:            nio.LocalObjectReference{Name: "worker-01"},
		ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://github.com/your-org/nixos-configs.git"},
	}}
}

func withFile(path string, v nio.AdditionalFileValue) func(*nio.NixosConfiguration) {
	return func(c *nio.NixosConfiguration) {
		c.Spec.AdditionalFiles = []nio.AdditionalFile{{Path: path, Value: v}}
	}
}

var inline = nio.AdditionalFileValue{Inline: ptr("x")}

// TestAPIServerRefusesBadInput sends objects the design says must never be stored
// and checks the API server refuses each with a message naming the problem.
func TestAPIServerRefusesBadInput(t *testing.T) {
	ns := newNamespace(t)
	machines := []struct {
		name   string
		mutate func(*nio.Machine)
		want   string
	}{
		{"ip out of range", func(m *nio.Machine) { m.Spec.IPAddress = "999.1.1.1" }, "ipAddress must be an IP address or a DNS name"},
		{"ip with shell", func(m *nio.Machine) { m.Spec.IPAddress = "1.2.3.4;reboot" }, "ipAddress must be an IP address or a DNS name"},
		{"empty hostname", func(m *nio.Machine) { m.Spec.Hostname = "" }, "spec.hostname"},
		{"port zero", func(m *nio.Machine) { m.Spec.SSHPort = 70000 }, "spec.sshPort"},
		{"bad host key", func(m *nio.Machine) { m.Spec.SSHHostKey = "not a key" }, "spec.sshHostKey"},
	}
	for i, tc := range machines {
		m := validMachine()
		tc.mutate(m)
		m.Name, m.Namespace = fmt.Sprintf("bad-machine-%d", i), ns
		expectInvalid(t, "Machine "+tc.name, m, tc.want)
	}

	configs := []struct {
		name   string
		mutate func(*nio.NixosConfiguration)
		want   string
	}{
		{"flake without #", func(c *nio.NixosConfiguration) { c.Spec.Flake = "worker" }, "flake must be <dir>#<attr>"},
		{"flake dir escaping", func(c *nio.NixosConfiguration) { c.Spec.Flake = "../x#worker" }, "the flake directory must be relative"},
		{"file path traversal", withFile("../../etc/shadow", inline), "path must be clean"},
		{"file path absolute", withFile("/etc/shadow", inline), "path must be relative"},
		{"file path in .git", withFile(".git/config", inline), "path must not be inside .git"},
		{"file path in nested .git", withFile("sub/.git/hooks/post-checkout", inline), "path must not be inside .git"},
		{"file with inline and secretRef", withFile("a", nio.AdditionalFileValue{Inline: ptr("x"), SecretRef: &nio.SecretKeyReference{Name: "s"}}), "exactly one of inline, secretRef, nixosFacter"},
		{"file with no value", withFile("a", nio.AdditionalFileValue{}), "exactly one of inline, secretRef, nixosFacter"},
		{"file with nixosFacter false only", withFile("a", nio.AdditionalFileValue{NixosFacter: ptr(false)}), "exactly one of inline, secretRef, nixosFacter"},
		{"mode on an inline file", func(c *nio.NixosConfiguration) {
			c.Spec.AdditionalFiles = []nio.AdditionalFile{{Path: "a", Value: inline, Mode: "0400"}}
		}, "mode, owner and group apply only to files from a secretRef"},
		{"owner on a facter file", func(c *nio.NixosConfiguration) {
			c.Spec.AdditionalFiles = []nio.AdditionalFile{{Path: "a", Value: nio.AdditionalFileValue{NixosFacter: ptr(true)}, Owner: "postgres"}}
		}, "mode, owner and group apply only to files from a secretRef"},
		{"secret mode not octal", func(c *nio.NixosConfiguration) {
			c.Spec.AdditionalFiles = []nio.AdditionalFile{{Path: "a", Value: nio.AdditionalFileValue{SecretRef: &nio.SecretKeyReference{Name: "s"}}, Mode: "0999"}}
		}, "spec.additionalFiles[0].mode"},
		{"secret owner with a colon", func(c *nio.NixosConfiguration) {
			c.Spec.AdditionalFiles = []nio.AdditionalFile{{Path: "a", Value: nio.AdditionalFileValue{SecretRef: &nio.SecretKeyReference{Name: "s"}}, Owner: "root:root"}}
		}, "spec.additionalFiles[0].owner"},
		{"empty gitRepo", func(c *nio.NixosConfiguration) { c.Spec.GitRepo = "" }, "spec.gitRepo"},
		{"gitRepo not a URL", func(c *nio.NixosConfiguration) { c.Spec.GitRepo = "not a url" }, "gitRepo must be"},
		{"machineRef without name", func(c *nio.NixosConfiguration) { c.Spec.MachineRef = nio.LocalObjectReference{} }, "spec.machineRef.name"},
		{"ref with ..", func(c *nio.NixosConfiguration) { c.Spec.Ref = "main..dev" }, "ref must be a branch name"},
		{"ref with space", func(c *nio.NixosConfiguration) { c.Spec.Ref = "main dev" }, "ref must be a branch name"},
		{"onRemoveFlake absolute", func(c *nio.NixosConfiguration) { c.Spec.OnRemoveFlake = "/etc/nixos/configuration.nix" }, "onRemoveFlake must be"},
		{"kexec without fullInstall", func(c *nio.NixosConfiguration) { c.Spec.KexecImage = "https://example.org/kexec.tar.gz" }, "kexecImage is only used with fullInstall"},
	}
	for i, tc := range configs {
		c := validConfiguration()
		tc.mutate(c)
		c.Name, c.Namespace = fmt.Sprintf("bad-config-%d", i), ns
		expectInvalid(t, "NixosConfiguration "+tc.name, c, tc.want)
	}

	// Durations: a typed metav1.Duration can't carry a bad string, so send raw objects.
	for i, bad := range []map[string]any{{"interval": "five minutes"}, {"rollback": map[string]any{"confirmTimeout": "soon"}}} {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": nio.GroupVersion.String(), "kind": "NixosConfiguration",
			"metadata": map[string]any{"name": fmt.Sprintf("bad-duration-%d", i), "namespace": ns},
			"spec":     map[string]any{"gitRepo": "https://example.org/r.git", "flake": ".#worker", "machineRef": map[string]any{"name": "m"}},
		}}
		for k, v := range bad {
			u.Object["spec"].(map[string]any)[k] = v
		}
		expectInvalid(t, fmt.Sprintf("NixosConfiguration duration %v", bad), u, "should match")
	}
	// spec.timeout: positive, at most a day.
	for i, tc := range []struct{ timeout, want string }{{"0s", "timeout must be positive and at most 24h"}, {"25h", "timeout must be positive and at most 24h"}, {"an hour", "should match"}} {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": nio.GroupVersion.String(), "kind": "NixosConfiguration",
			"metadata": map[string]any{"name": fmt.Sprintf("bad-timeout-%d", i), "namespace": ns},
			"spec":     map[string]any{"gitRepo": "https://example.org/r.git", "flake": ".#worker", "machineRef": map[string]any{"name": "m"}, "timeout": tc.timeout},
		}}
		expectInvalid(t, "NixosConfiguration timeout "+tc.timeout, u, tc.want)
	}

	// The valid objects themselves are accepted, so the refusals above are about the
	// mutation alone.
	m, c := validMachine(), validConfiguration()
	m.Name, m.Namespace, c.Name, c.Namespace = "good", ns, "good", ns
	withSecret := validConfiguration()
	withSecret.Name, withSecret.Namespace = "good-secret", ns
	withSecret.Spec.AdditionalFiles = []nio.AdditionalFile{{Path: "secrets/db", Mode: "0440", Owner: "postgres", Group: "1000",
		Value: nio.AdditionalFileValue{SecretRef: &nio.SecretKeyReference{Name: "s"}}}}
	for _, obj := range []client.Object{m, c, withSecret} {
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Errorf("valid %T refused: %v", obj, err)
		}
	}
}

func validFleet() *nio.NixosFleet {
	return &nio.NixosFleet{Spec: nio.NixosFleetSpec{
		MachineSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "web"}},
		Template: nio.FleetTemplate{Flake: ".#web-{hostname}",
			ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://github.com/your-org/nixos-configs.git"}},
	}}
}

// TestAPIServerRefusesBadFleets: what CEL can say about a NixosFleet without knowing
// its Machines (the controller stalls on the rest: a strategy too big for the fleet).
func TestAPIServerRefusesBadFleets(t *testing.T) {
	ns := newNamespace(t)
	fleets := []struct {
		name   string
		mutate func(*nio.NixosFleet)
		want   string
	}{
		{"empty selector", func(f *nio.NixosFleet) { f.Spec.MachineSelector = metav1.LabelSelector{} }, "machineSelector must have matchLabels or matchExpressions"},
		{"selector with empty matchLabels", func(f *nio.NixosFleet) { f.Spec.MachineSelector.MatchLabels = map[string]string{} }, "machineSelector must have matchLabels or matchExpressions"},
		{"unknown placeholder", func(f *nio.NixosFleet) { f.Spec.Template.Flake = ".#{ip}" }, "placeholders {name} and {hostname}"},
		{"unclosed placeholder", func(f *nio.NixosFleet) { f.Spec.Template.Flake = ".#web-{name" }, "placeholders {name} and {hostname}"},
		{"placeholder in the directory", func(f *nio.NixosFleet) { f.Spec.Template.Flake = "{name}#web" }, "placeholders {name} and {hostname}"},
		{"flake without #", func(f *nio.NixosFleet) { f.Spec.Template.Flake = "web" }, "flake must be <dir>#<attr>"},
		{"flake dir escaping", func(f *nio.NixosFleet) { f.Spec.Template.Flake = "../x#{name}" }, "the flake directory must be relative"},
		{"healthChecks with action boot", func(f *nio.NixosFleet) {
			f.Spec.Template.Action = nio.ActionBoot
			f.Spec.Template.HealthChecks = &nio.HealthChecks{Checks: []nio.HealthCheck{{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: "http://localhost/"}}}}
		}, "healthChecks need action switch or test"},
		{"kexec without fullInstall", func(f *nio.NixosFleet) { f.Spec.Template.KexecImage = "https://example.org/kexec.tar.gz" }, "kexecImage is only used with fullInstall"},
		{"onFailure not an option", func(f *nio.NixosFleet) { f.Spec.Strategy.OnFailure = "Ignore" }, "spec.strategy.onFailure"},
		{"promotion not an option", func(f *nio.NixosFleet) { f.Spec.Strategy.Promotion = "Sometimes" }, "spec.strategy.promotion"},
		{"negative canary", func(f *nio.NixosFleet) { f.Spec.Strategy.Canary = -1 }, "spec.strategy.canary"},
		{"negative maxParallel", func(f *nio.NixosFleet) { f.Spec.Strategy.MaxParallel = -1 }, "spec.strategy.maxParallel"},
	}
	for i, tc := range fleets {
		f := validFleet()
		tc.mutate(f)
		f.Name, f.Namespace = fmt.Sprintf("bad-fleet-%d", i), ns
		expectInvalid(t, "NixosFleet "+tc.name, f, tc.want)
	}

	// The valid ones are accepted: both placeholders, an expression selector, health
	// checks with switch, every option of the strategy.
	good := validFleet()
	good.Name, good.Namespace = "good", ns
	expr := validFleet()
	expr.Name, expr.Namespace = "good-expr", ns
	expr.Spec.MachineSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: metav1.LabelSelectorOpExists}}}
	expr.Spec.Template.Flake = "hosts#{name}.{hostname}"
	expr.Spec.Template.HealthChecks = &nio.HealthChecks{Checks: []nio.HealthCheck{{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: "http://localhost/"}}}}
	expr.Spec.Strategy = nio.RolloutStrategy{Canary: 1, Batches: []intstr.IntOrString{intstr.FromInt32(2), intstr.FromString("25%")},
		MaxParallel: 2, MaxUnavailable: ptr(intstr.FromString("10%")), Promotion: nio.PromotionManual, OnFailure: nio.FailureRevert,
		PauseBetweenBatches: &metav1.Duration{Duration: time.Minute}}
	for _, f := range []*nio.NixosFleet{good, expr} {
		if err := env.Client.Create(context.Background(), f); err != nil {
			t.Errorf("valid NixosFleet %s refused: %v", f.Name, err)
		}
	}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(good), good); err != nil {
		t.Fatal(err)
	}
	if s := good.Spec.Strategy; s.Promotion != nio.PromotionAutomatic || s.OnFailure != nio.FailurePause || good.Spec.Template.Ref != "main" {
		t.Errorf("defaults: strategy %+v, ref %q", s, good.Spec.Template.Ref)
	}
}

func expectInvalid(t *testing.T, what string, obj client.Object, want string) {
	t.Helper()
	err := env.Client.Create(context.Background(), obj)
	if err == nil {
		t.Errorf("%s: accepted, want refused", what)
		return
	}
	if !apierrors.IsInvalid(err) {
		t.Errorf("%s: error %v is not Invalid", what, err)
		return
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("%s: error %q does not say %q", what, err, want)
	}
}
