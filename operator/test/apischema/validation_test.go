package apischema

import (
	"context"
	"fmt"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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
