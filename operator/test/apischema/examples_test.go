package apischema

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	nio "github.com/homystack/nio/api/v1alpha1"
)

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.Root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// guideBlocks returns the yaml code blocks of docs/usage-guide.md under a heading.
func guideBlocks(t *testing.T, heading string) []string {
	t.Helper()
	guide := string(readFile(t, "docs/usage-guide.md"))
	start := strings.Index(guide, "\n## "+heading+"\n")
	if start < 0 {
		t.Fatalf("usage guide has no section %q", heading)
	}
	section := guide[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// TestExamplesAreTheUsageGuideVerbatim pins examples/ to the guide's YAML, byte for byte.
func TestExamplesAreTheUsageGuideVerbatim(t *testing.T) {
	ref := guideBlocks(t, "Resource Reference")
	adv := guideBlocks(t, "Advanced Scenarios")
	want := map[string]string{
		"examples/machine-example.yaml":            ref[0],
		"examples/nixosconfiguration-example.yaml": ref[1],
		"examples/advanced/flake.yaml":             adv[0],
		"examples/advanced/additional-files.yaml":  adv[1],
		"examples/advanced/removal.yaml":           adv[2],
	}
	if len(ref) != 2 || len(adv) != 3 {
		t.Fatalf("guide has %d resource and %d advanced blocks, want 2 and 3", len(ref), len(adv))
	}
	for file, block := range want {
		if got := string(readFile(t, file)); got != block {
			t.Errorf("%s differs from the usage guide:\n--- file\n%s\n--- guide\n%s", file, got, block)
		}
	}
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(env.Kubectl(), append([]string{"--kubeconfig", env.Kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestUsageGuideManifestsApplyWithDefaults applies the guide's Machine and
// NixosConfiguration with the real kubectl and reads back the defaults.
func TestUsageGuideManifestsApplyWithDefaults(t *testing.T) {
	ns := newNamespace(t)
	kubectl(t, "apply", "-n", ns, "-f", filepath.Join(env.Root, "examples/machine-example.yaml"))
	kubectl(t, "apply", "-n", ns, "-f", filepath.Join(env.Root, "examples/nixosconfiguration-example.yaml"))

	ctx := context.Background()
	var m nio.Machine
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "worker-01"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Spec.IPAddress != "192.168.1.100" || m.Spec.SSHUser != "root" || m.Spec.SSHPort != 22 {
		t.Errorf("machine spec = %+v", m.Spec)
	}
	if m.Spec.SSHKeySecretRef == nil || m.Spec.SSHKeySecretRef.Name != "worker-ssh-key" || m.Spec.SSHKeySecretRef.Key != "ssh-privatekey" {
		t.Errorf("sshKeySecretRef = %+v, want worker-ssh-key / default key ssh-privatekey", m.Spec.SSHKeySecretRef)
	}
	if m.Spec.Agent.Port != 9443 || m.Spec.Agent.Disabled {
		t.Errorf("agent = %+v, want default port 9443, enabled", m.Spec.Agent)
	}

	var c nio.NixosConfiguration
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "worker-config"}, &c); err != nil {
		t.Fatal(err)
	}
	s := c.Spec
	if s.GitRepo != "https://github.com/your-org/nixos-configs.git" || s.Flake != ".#worker" || s.MachineRef.Name != "worker-01" ||
		s.CredentialsRef == nil || s.CredentialsRef.Name != "git-credentials" || s.FullInstall {
		t.Errorf("configuration spec = %+v", s)
	}
	if s.Ref != "main" || s.Interval.Duration != 5*time.Minute || s.Action != nio.ActionSwitch || s.Suspend {
		t.Errorf("defaults: ref=%q interval=%v action=%q suspend=%v, want main 5m switch false", s.Ref, s.Interval.Duration, s.Action, s.Suspend)
	}
	if s.Rollback.Enabled == nil || !*s.Rollback.Enabled || s.Rollback.ConfirmTimeout.Duration != time.Minute {
		t.Errorf("rollback defaults = %+v, want enabled, 60s", s.Rollback)
	}
	if s.Timeout == nil || s.Timeout.Duration != time.Hour {
		t.Errorf("timeout default = %v, want 1h", s.Timeout)
	}

	// The printer columns and short names work with kubectl.
	if out := kubectl(t, "get", "mach", "-n", ns); !strings.Contains(out, "HOSTNAME") || !strings.Contains(out, "worker-01") {
		t.Errorf("kubectl get mach:\n%s", out)
	}
	if out := kubectl(t, "get", "nixconf", "-n", ns); !strings.Contains(out, "FLAKE") || !strings.Contains(out, ".#worker") {
		t.Errorf("kubectl get nixconf:\n%s", out)
	}
}

// TestUsageGuideAdvancedSnippetsApply merges each Advanced Scenarios snippet into the
// guide's NixosConfiguration and creates it.
func TestUsageGuideAdvancedSnippetsApply(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	for i, snippet := range []string{"flake.yaml", "additional-files.yaml", "removal.yaml"} {
		var base map[string]any
		if err := yaml.Unmarshal(readFile(t, "examples/nixosconfiguration-example.yaml"), &base); err != nil {
			t.Fatal(err)
		}
		var frag map[string]any
		if err := yaml.Unmarshal(readFile(t, "examples/advanced/"+snippet), &frag); err != nil {
			t.Fatal(err)
		}
		if spec, ok := frag["spec"].(map[string]any); ok {
			frag = spec // a snippet is either a spec fragment or the fields of spec
		}
		for k, v := range frag {
			base["spec"].(map[string]any)[k] = v
		}
		u := &unstructured.Unstructured{Object: base}
		u.SetNamespace(ns)
		u.SetName(strings.TrimSuffix(snippet, ".yaml") + "-" + string(rune('a'+i)))
		if err := env.Client.Create(ctx, u); err != nil {
			t.Errorf("%s: %v", snippet, err)
			continue
		}
		var got nio.NixosConfiguration
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: u.GetName()}, &got); err != nil {
			t.Fatal(err)
		}
		switch snippet {
		case "additional-files.yaml":
			f := got.Spec.AdditionalFiles
			if len(f) != 3 || f[0].Value.SecretRef == nil || f[0].Value.SecretRef.Key != "" || f[1].Value.Inline == nil ||
				f[2].Value.NixosFacter == nil || !*f[2].Value.NixosFacter {
				t.Errorf("additionalFiles read back as %+v", f)
			}
		case "removal.yaml":
			if got.Spec.OnRemoveFlake != "hosts/minimal.nix" {
				t.Errorf("onRemoveFlake = %q", got.Spec.OnRemoveFlake)
			}
		}
	}
}
