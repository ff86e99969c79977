package install

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/testkit/nixtest"
)

// TestExampleSecretsFitTheExamples applies examples/secrets/ and checks each Secret
// has the key the usage guide's objects read, as the API server defaults them, and
// that the Git credentials parse as what they claim to be. The files must also tell
// users to create the real Secrets with kubectl instead.
func TestExampleSecretsFitTheExamples(t *testing.T) {
	ctx := context.Background()
	for _, f := range []string{"worker-ssh-key.yaml", "git-credentials.yaml"} {
		text, err := os.ReadFile(filepath.Join(env.Root, "examples", "secrets", f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(text), "kubectl create secret generic") || !strings.Contains(string(text), "PLACEHOLDER") {
			t.Errorf("%s does not mark its data a placeholder and point at kubectl create secret", f)
		}
	}
	kubectl(t, "apply", "-f", filepath.Join(env.Root, "examples", "secrets"))

	// What the guide's Machine and NixosConfiguration read, defaults applied.
	var machine nio.Machine
	serverDefaulted(t, "machine-example.yaml", &machine)
	var conf nio.NixosConfiguration
	serverDefaulted(t, "nixosconfiguration-example.yaml", &conf)

	var key corev1.Secret
	ref := machine.Spec.SSHKeySecretRef
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: ref.Name}, &key); err != nil {
		t.Fatalf("the Machine's Secret %s: %v", ref.Name, err)
	}
	if len(key.Data[ref.Key]) == 0 {
		t.Errorf("Secret %s has no key %q, which the Machine reads (keys: %v)", ref.Name, ref.Key, keys(key.Data))
	}

	var creds corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: conf.Spec.CredentialsRef.Name}, &creds); err != nil {
		t.Fatalf("the NixosConfiguration's Secret %s: %v", conf.Spec.CredentialsRef.Name, err)
	}
	if _, err := source.ParseCredentials(creds.Data); err != nil || len(creds.Data[source.KeyToken]) == 0 {
		t.Errorf("git-credentials (keys %v) is not a token Secret NIO accepts: %v", keys(creds.Data), err)
	}
}

// serverDefaulted sends an example to the API server as a dry run and decodes what
// it would store.
func serverDefaulted(t *testing.T, example string, into any) {
	t.Helper()
	out := kubectl(t, "create", "--dry-run=server", "-o", "yaml", "-f", filepath.Join(env.Root, "examples", example))
	if err := yaml.Unmarshal([]byte(out), into); err != nil {
		t.Fatalf("%s: %v", example, err)
	}
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// flakeReport is what testdata/evaluate-flake.nix prints for one system: the values
// its modules set, one entry per module setting the option.
type flakeReport struct {
	AgentModule    []bool           `json:"agentModule"`
	Agent          []map[string]any `json:"agent"`
	OpenSSH        []bool           `json:"openssh"`
	RootKeys       [][]string       `json:"rootKeys"`
	Platform       []string         `json:"platform"`
	RootFileSystem []string         `json:"rootFileSystem"`
	NixFeatures    [][]string       `json:"nixFeatures"`
	StateVersion   []string         `json:"stateVersion"`
	PostgreSQL     []bool           `json:"postgresql"`
	// HostName values are strings, or lib.mkForce overrides ({_type, priority, content}).
	HostName   []any            `json:"hostName"`
	Nginx      []bool           `json:"nginx"`
	NginxHosts []map[string]any `json:"nginxHosts"`
}

type flakeEvaluation struct {
	Worker       flakeReport            `json:"worker"`
	Minimal      flakeReport            `json:"minimal"`
	MinimalFile  flakeReport            `json:"minimalFile"`
	Systems      map[string]flakeReport `json:"systems"`
	AgentOptions []string               `json:"agentOptions"`
}

// evaluateFlake evaluates a copy of the example flake with real Nix (offline, with
// stand-ins for nixpkgs and NIO's flake).
func evaluateFlake(t *testing.T, dir string) flakeEvaluation {
	t.Helper()
	nix := nixtest.New(t)
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json",
		filepath.Join("testdata", "evaluate-flake.nix"), "--argstr", "flakeDir", dir, "--argstr", "repoRoot", env.Root)
	cmd.Env = nix.Environ()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("evaluate the example flake: %v\n%s", err, stderr.String())
	}
	var ev flakeEvaluation
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return ev
}

// copyDir copies a directory tree of regular files.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExampleFlake: .#worker runs NIO's agent module with the agent enabled (options
// nix/module.nix declares); .#minimal, and hosts/minimal.nix alone as onRemoveFlake
// evaluates it, keep the host reachable over SSH without the agent; both keep the
// hardware; and a config/custom.nix written by additionalFiles (the usage guide's)
// becomes part of .#worker.
func TestExampleFlake(t *testing.T) {
	dir := t.TempDir()
	copyDir(t, filepath.Join(env.Root, "examples", "flake"), dir)
	ev := evaluateFlake(t, dir)

	if len(ev.Worker.AgentModule) != 1 || len(ev.Worker.Agent) != 1 || ev.Worker.Agent[0]["enable"] != true {
		t.Fatalf(".#worker: agent module %v, services.nio-agent %v; want the module imported and the agent enabled",
			ev.Worker.AgentModule, ev.Worker.Agent)
	}
	for _, a := range ev.Worker.Agent {
		for opt := range a {
			if !slices.Contains(ev.AgentOptions, opt) {
				t.Errorf(".#worker sets services.nio-agent.%s, which nix/module.nix does not declare (%v)", opt, ev.AgentOptions)
			}
		}
	}
	if port, _ := ev.Worker.Agent[0]["port"].(float64); port != 9443 {
		t.Errorf(".#worker agent port %v, want 9443 (the Machine's default agent.port)", ev.Worker.Agent[0]["port"])
	}
	for name, r := range map[string]flakeReport{"minimal": ev.Minimal, "hosts/minimal.nix": ev.MinimalFile} {
		if len(r.AgentModule) != 0 || len(r.Agent) != 0 {
			t.Errorf("%s runs the agent", name)
		}
	}
	for name, r := range map[string]flakeReport{".#worker": ev.Worker, ".#minimal": ev.Minimal, "hosts/minimal.nix": ev.MinimalFile} {
		if !slices.Equal(r.OpenSSH, []bool{true}) || len(r.RootKeys) != 1 || len(r.RootKeys[0]) == 0 {
			t.Errorf("%s: openssh %v, root keys %v; the operator could not log in", name, r.OpenSSH, r.RootKeys)
		}
		if len(r.Platform) != 1 || len(r.RootFileSystem) != 1 || len(r.StateVersion) != 1 {
			t.Errorf("%s: platform %v, / on %v, stateVersion %v; want each set once", name, r.Platform, r.RootFileSystem, r.StateVersion)
		}
		if len(r.NixFeatures) != 1 || !slices.Contains(r.NixFeatures[0], "flakes") {
			t.Errorf("%s: nix features %v; the host builds flakes", name, r.NixFeatures)
		}
		if len(r.PostgreSQL) != 0 {
			t.Errorf("%s enables postgresql without config/custom.nix", name)
		}
	}

	// The usage guide's additionalFiles entry config/custom.nix, as NIO writes it.
	var spec struct {
		AdditionalFiles []nio.AdditionalFile `json:"additionalFiles"`
	}
	raw, err := os.ReadFile(filepath.Join(env.Root, "examples", "advanced", "additional-files.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(spec.AdditionalFiles, func(f nio.AdditionalFile) bool { return f.Path == "config/custom.nix" })
	if i < 0 || spec.AdditionalFiles[i].Value.Inline == nil {
		t.Fatal("additional-files.yaml has no inline config/custom.nix")
	}
	if err := os.MkdirAll(filepath.Join(dir, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config", "custom.nix"), []byte(*spec.AdditionalFiles[i].Value.Inline), 0o644); err != nil {
		t.Fatal(err)
	}
	ev = evaluateFlake(t, dir)
	if !slices.Equal(ev.Worker.PostgreSQL, []bool{true}) {
		t.Errorf(".#worker ignores config/custom.nix from additionalFiles: postgresql %v", ev.Worker.PostgreSQL)
	}
	if len(ev.Minimal.PostgreSQL) != 0 {
		t.Errorf(".#minimal picked up config/custom.nix: postgresql %v", ev.Minimal.PostgreSQL)
	}
}

// TestExampleFlakeHasTheFleetsSystems: examples/fleet.yaml's NixosFleet names each
// Machine's system with flake ".#{hostname}", so the example flake has a system for
// every hostname its Machines have — the worker's (agent and nginx) under the host's
// own name (a mkForce over common.nix's worker-01), whose default virtual host answers
// the fleet's http check.
func TestExampleFlakeHasTheFleetsSystems(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(env.Root, "examples", "fleet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var hostnames []string
	flake := ""
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var obj struct {
			Kind string `json:"kind"`
			Spec struct {
				Hostname string `json:"hostname"`
				Template struct {
					Flake string `json:"flake"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		switch obj.Kind {
		case "Machine":
			hostnames = append(hostnames, obj.Spec.Hostname)
		case "NixosFleet":
			flake = obj.Spec.Template.Flake
		}
	}
	if flake != ".#{hostname}" || len(hostnames) != 3 {
		t.Fatalf("examples/fleet.yaml: flake %q and Machines with hostnames %v; want .#{hostname} and three", flake, hostnames)
	}

	dir := t.TempDir()
	copyDir(t, filepath.Join(env.Root, "examples", "flake"), dir)
	ev := evaluateFlake(t, dir)
	for _, h := range hostnames {
		r, ok := ev.Systems[h]
		if !ok {
			t.Errorf("the example flake has no nixosConfigurations.%s for the fleet's Machine (systems: %v)", h, keysOf(ev.Systems))
			continue
		}
		if len(r.Agent) != 1 || r.Agent[0]["enable"] != true || !slices.Equal(r.Nginx, []bool{true}) {
			t.Errorf(".#%s: services.nio-agent %v, nginx %v; want the worker's agent and nginx", h, r.Agent, r.Nginx)
		}
		forced := false
		for _, v := range r.HostName {
			if o, ok := v.(map[string]any); ok && o["_type"] == "override" && o["content"] == h {
				forced = true
			}
		}
		if !forced {
			t.Errorf(".#%s: networking.hostName values %v, want a mkForce of %q", h, r.HostName, h)
		}
		if len(r.NginxHosts) != 1 || r.NginxHosts[0][h] == nil {
			t.Errorf(".#%s: nginx virtual hosts %v, want one named %s (the default, for the http check)", h, r.NginxHosts, h)
		} else if vh, _ := r.NginxHosts[0][h].(map[string]any); vh["default"] != true {
			t.Errorf(".#%s: virtual host %v is not the default server", h, vh)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
