package agentunit

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/homystack/nio/testkit/nixtest"
)

// nixDir is the repository's nix/, found from this file.
func nixDir(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "nix")
}

// moduleEval is what nix/tests/eval-module.nix returns.
type moduleEval struct {
	Unit             Section  `json:"unit"`
	Service          Section  `json:"service"`
	Install          Section  `json:"install"`
	Tmpfiles         []string `json:"tmpfiles"`
	FailedAssertions []string `json:"failedAssertions"`
	RestartIfChanged bool     `json:"restartIfChanged"`
	FirewallPorts    []int    `json:"firewallPorts"`
	Stubs            struct {
		Agent   string   `json:"agent"`
		Facter  string   `json:"facter"`
		Path    []string `json:"path"`
		NixPath []string `json:"nixPath"`
	} `json:"stubs"`
}

// moduleOptions are services.nio-agent values (module option names) and nixPath.
type moduleOptions struct {
	Services map[string]any `json:"services,omitempty"`
	NixPath  []string       `json:"nixPath,omitempty"`
}

// evalModule evaluates module (nix/module.nix when "") offline with the stub lib.
func evalModule(t *testing.T, env *nixtest.Env, opts moduleOptions, module string) moduleEval {
	t.Helper()
	in, err := json.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{"--eval", "--strict", "--json", filepath.Join(nixDir(t), "tests", "eval-module.nix"), "--argstr", "optionsJSON", string(in)}
	if module != "" {
		argv = append(argv, "--arg", "module", module)
	}
	cmd := exec.Command("nix-instantiate", argv...)
	cmd.Env = env.Environ()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-instantiate %s: %v\n%s", in, err, stderrOf(err))
	}
	var ev moduleEval
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return ev
}

// goOptions are the same options for Render, with the packages the evaluation
// stubbed.
func goOptions(ev moduleEval, opts moduleOptions) Options {
	o := Options{ExecPath: ev.Stubs.Agent, FacterPath: ev.Stubs.Facter, Path: ev.Stubs.Path, NixPath: ev.Stubs.NixPath}
	s := opts.Services
	if v, ok := s["listenAddress"].(string); ok {
		o.ListenAddress = v
	}
	if v, ok := s["port"].(int); ok {
		o.Port = v
	}
	if v, ok := s["stateDir"].(string); ok {
		o.StateDir = v
	}
	if v, ok := s["tlsDir"].(string); ok {
		o.TLSDir = v
	}
	if v, ok := s["logLevel"].(string); ok {
		o.LogLevel = v
	}
	if v, ok := s["extraArgs"].([]string); ok {
		o.ExtraArgs = v
	}
	return o
}

var agreeCases = map[string]moduleOptions{
	"defaults":              {},
	"custom state dirs":     {Services: map[string]any{"stateDir": "/srv/nio", "tlsDir": "/etc/nio-agent/tls"}},
	"tls dir inside state":  {Services: map[string]any{"stateDir": "/srv/nio", "tlsDir": "/srv/nio/tls"}},
	"other dir in /var/lib": {Services: map[string]any{"stateDir": "/var/lib/nio", "tlsDir": "/var/lib/nio-tls"}},
	"mixed":                 {Services: map[string]any{"stateDir": "/var/lib/nio-agent", "tlsDir": "/persist/nio/tls"}},
	"same dir":              {Services: map[string]any{"stateDir": "/srv/nio", "tlsDir": "/srv/nio"}},
	"ipv6 listen":           {Services: map[string]any{"listenAddress": "fd00::5", "port": 10443}},
	"ipv4 listen":           {Services: map[string]any{"listenAddress": "10.0.0.5", "logLevel": "debug", "openFirewall": true}},
	"hard extra args":       {Services: map[string]any{"extraArgs": hardArgs}},
	"nix path":              {NixPath: []string{"nixpkgs=/etc/nixpkgs", "nixos-config=/etc/nixos/configuration.nix"}},
}

// The test host runs the unit Render makes; NixOS runs the one the module makes.
// They must be the same, setting for setting.
func TestModuleAndRendererMakeTheSameUnit(t *testing.T) {
	env := nixtest.New(t)
	for name, opts := range agreeCases {
		t.Run(name, func(t *testing.T) {
			ev := evalModule(t, env, opts, "")
			if len(ev.FailedAssertions) > 0 {
				t.Fatalf("module assertions failed: %q", ev.FailedAssertions)
			}
			if ev.RestartIfChanged {
				t.Error("restartIfChanged is true: a switch would restart the agent that runs it")
			}
			f, err := Render(goOptions(ev, opts))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []struct {
				name       string
				nix, goSec Section
			}{{"Unit", ev.Unit, f.Unit}, {"Service", ev.Service, f.Service}, {"Install", ev.Install, f.Install}} {
				for _, k := range sortedKeys(union(s.nix, s.goSec)) {
					if !reflect.DeepEqual(s.nix[k], s.goSec[k]) {
						t.Errorf("[%s] %s:\nmodule: %q\nGo:     %q", s.name, k, s.nix[k], s.goSec[k])
					}
				}
			}
			if !reflect.DeepEqual(ev.Tmpfiles, f.Tmpfiles) && (len(ev.Tmpfiles) > 0 || len(f.Tmpfiles) > 0) {
				t.Errorf("tmpfiles: module %q, Go %q", ev.Tmpfiles, f.Tmpfiles)
			}
		})
	}
}

func union(a, b Section) Section {
	u := Section{}
	for k := range a {
		u[k] = nil
	}
	for k := range b {
		u[k] = nil
	}
	return u
}

func TestDirectoriesExistBeforeTheUnitStarts(t *testing.T) {
	env := nixtest.New(t)
	// Defaults: both are StateDirectory=, created by systemd before every start —
	// the TLS dir too, so the operator's SSH delivery finds it and the unit never
	// fails with 226/NAMESPACE waiting for it.
	ev := evalModule(t, env, moduleOptions{}, "")
	if want := []string{"nio-agent", "nio-agent/tls"}; !reflect.DeepEqual(ev.Service["StateDirectory"], want) {
		t.Errorf("StateDirectory = %q, want %q", ev.Service["StateDirectory"], want)
	}
	// No condition on the identity: the agent waits for it (certs.WaitLoad).
	if got, ok := ev.Unit["ConditionPathExists"]; ok {
		t.Errorf("ConditionPathExists = %q: the unit must start before the identity is delivered", got)
	}
	// Elsewhere: tmpfiles creates them; ReadWritePaths has '-' so a vanished one
	// is the agent's error message, not the unit's 226.
	ev = evalModule(t, env, agreeCases["custom state dirs"], "")
	if want := []string{"d /srv/nio 0700 root root - -", "d /etc/nio-agent/tls 0700 root root - -"}; !reflect.DeepEqual(ev.Tmpfiles, want) {
		t.Errorf("tmpfiles = %q, want %q", ev.Tmpfiles, want)
	}
	for _, p := range []string{"-/srv/nio", "-/etc/nio-agent/tls"} {
		if !contains(ev.Service["ReadWritePaths"], p) {
			t.Errorf("ReadWritePaths %q lacks %s", ev.Service["ReadWritePaths"], p)
		}
	}
	if _, ok := ev.Service["StateDirectory"]; ok {
		t.Errorf("StateDirectory = %q for dirs outside /var/lib", ev.Service["StateDirectory"])
	}
	if ev := evalModule(t, env, agreeCases["ipv4 listen"], ""); !reflect.DeepEqual(ev.FirewallPorts, []int{9443}) {
		t.Errorf("openFirewall: ports %v", ev.FirewallPorts)
	}
}

// Options the unit cannot work with fail the evaluation with a message (the
// module's assertions), and Render refuses them with the same messages.
func TestBadOptionsFailAtEvaluationWithTheSameMessages(t *testing.T) {
	env := nixtest.New(t)
	for name, services := range map[string]map[string]any{
		"relative state dir":      {"stateDir": "var/lib/nio"},
		"trailing slash":          {"stateDir": "/srv/nio/"},
		"root":                    {"stateDir": "/"},
		"dot dot":                 {"stateDir": "/srv/../etc"},
		"dot":                     {"tlsDir": "/srv/./tls"},
		"space":                   {"stateDir": "/srv/my nio"},
		"percent":                 {"tlsDir": "/srv/100%"},
		"private tmp":             {"stateDir": "/tmp/nio"},
		"hidden home":             {"tlsDir": "/root/nio-tls"},
		"nix store":               {"stateDir": "/nix/store/nio"},
		"var lib itself":          {"stateDir": "/var/lib"},
		"both bad":                {"stateDir": "/var/tmp/x", "tlsDir": "/home/nio"},
		"state dir in extra args": {"extraArgs": []string{"--max-source-bytes=1", "--state-dir=/elsewhere"}},
		"systemd-run off":         {"extraArgs": []string{"-systemd-run=false"}},
		"listen as two args":      {"extraArgs": []string{"--listen", ":1"}},
		"log format":              {"extraArgs": []string{"--log-format=text"}},
	} {
		t.Run(name, func(t *testing.T) {
			opts := moduleOptions{Services: services}
			ev := evalModule(t, env, opts, "")
			if len(ev.FailedAssertions) == 0 {
				t.Fatalf("the module accepted %v", services)
			}
			o := goOptions(ev, opts)
			if got := Check(o); !reflect.DeepEqual(got, ev.FailedAssertions) {
				t.Errorf("Check:\n%q\nmodule assertions:\n%q", got, ev.FailedAssertions)
			}
			if _, err := Render(o); err == nil || !strings.Contains(err.Error(), ev.FailedAssertions[0]) {
				t.Errorf("Render: %v", err)
			}
		})
	}
}

// The module's settings come from the JSON file, not from a copy of it: a changed
// JSON changes what the module makes, and what Render makes with it.
func TestTheModuleReallyReadsTheJSON(t *testing.T) {
	env := nixtest.New(t)
	dir := t.TempDir()
	module, err := os.ReadFile(filepath.Join(nixDir(t), "module.nix"))
	if err != nil {
		t.Fatal(err)
	}
	specFile := filepath.Join(nixDir(t), "agent-unit.json")
	var raw map[string]any
	data, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	raw["unit"].(map[string]any)["Description"] = "altered in a test"
	raw["service"].(map[string]any)["X-Marker"] = []any{"one", "two"}
	raw["service"].(map[string]any)["RestartSec"] = "17s"
	raw["environment"].(map[string]any)["MARKER"] = "from the json"
	raw["args"] = []any{"--log-format=json", "--marker"}
	altered, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"module.nix": module, "agent-unit.json": altered} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ev := evalModule(t, env, moduleOptions{}, filepath.Join(dir, "module.nix"))
	if got := ev.Unit["Description"]; !reflect.DeepEqual(got, []string{"altered in a test"}) {
		t.Errorf("Description = %q", got)
	}
	if got := ev.Service["X-Marker"]; !reflect.DeepEqual(got, []string{"one", "two"}) {
		t.Errorf("X-Marker = %q", got)
	}
	if got := ev.Service["RestartSec"]; !reflect.DeepEqual(got, []string{"17s"}) {
		t.Errorf("RestartSec = %q", got)
	}
	if !strings.Contains(strings.Join(ev.Service["Environment"], " "), "MARKER=from the json") {
		t.Errorf("Environment = %q", ev.Service["Environment"])
	}
	if !strings.HasSuffix(ev.Service["ExecStart"][0], `"--log-format=json" "--marker"`) {
		t.Errorf("ExecStart = %s", ev.Service["ExecStart"][0])
	}
	spec, err := LoadSpec(filepath.Join(dir, "agent-unit.json"))
	if err != nil {
		t.Fatal(err)
	}
	o := goOptions(ev, moduleOptions{})
	o.Spec = spec
	f, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.Service, ev.Service) || !reflect.DeepEqual(f.Unit, ev.Unit) {
		t.Errorf("with the altered JSON, Render and the module differ:\nGo:     %q\nmodule: %q", f.Service, ev.Service)
	}
}
