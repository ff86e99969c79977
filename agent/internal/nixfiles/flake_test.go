package nixfiles

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/homystack/nio/testkit/nixtest"
)

// flakeEval is what nix/tests/eval-flake.nix returns.
type flakeEval struct {
	Systems  []string `json:"systems"`
	Packages map[string]struct {
		Agent          builderCall `json:"nio-agent"`
		Operator       builderCall `json:"nio-operator"`
		CLI            builderCall `json:"nio"`
		DefaultIsAgent bool        `json:"defaultIsAgent"`
	} `json:"packages"`
	VendorHashes  map[string]string `json:"vendorHashes"`
	Modules       []string          `json:"modules"`
	ModuleIsFunc  bool              `json:"moduleIsAModule"`
	CurrentModEnv map[string]string `json:"currentModEnv"`
}

type builderCall struct {
	Builder       string            `json:"builder"`
	System        string            `json:"system"`
	Pname         string            `json:"pname"`
	ModRoot       string            `json:"modRoot"`
	SubPackages   []string          `json:"subPackages"`
	PostInstall   string            `json:"postInstall"`
	VendorHash    string            `json:"vendorHash"`
	Env           map[string]string `json:"env"`
	ModEnvCurrent map[string]string `json:"modEnvCurrent"`
	ModEnvOld     map[string]string `json:"modEnvOld"`
	MainProgram   string            `json:"mainProgram"`
	Src           []string          `json:"src"`
}

func evalFlake(t *testing.T, env *nixtest.Env, args ...string) ([]byte, error) {
	t.Helper()
	argv := append([]string{"--eval", "--strict", "--json", filepath.Join(repoRoot(t), "nix", "tests", "eval-flake.nix")}, args...)
	cmd := exec.Command("nix-instantiate", argv...)
	cmd.Env = env.Environ()
	return cmd.Output()
}

// What `nix flake check` would see of the outputs, short of nixpkgs: every package
// is built by buildGo126Module (go.mod's Go) with the recorded vendor hash, the
// vendor derivation keeps nixpkgs' env (GOTOOLCHAIN=local, GOOS/GOARCH,
// CGO_ENABLED) with GOWORK=off added, and the module is exported.
func TestFlakeOutputsEvaluate(t *testing.T) {
	env := nixtest.New(t)
	out, err := evalFlake(t, env, "--arg", "withGo126", "true")
	if err != nil {
		t.Fatalf("eval-flake.nix: %v\n%s", err, exitStderr(err))
	}
	var ev flakeEval
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if want := []string{"aarch64-linux", "x86_64-linux"}; !reflect.DeepEqual(ev.Systems, want) {
		t.Errorf("systems %q, want %q", ev.Systems, want)
	}
	if want := []string{"default", "nio-agent"}; !reflect.DeepEqual(ev.Modules, want) || !ev.ModuleIsFunc {
		t.Errorf("nixosModules %q (a module: %v)", ev.Modules, ev.ModuleIsFunc)
	}
	root := repoRoot(t)
	for system, ps := range ev.Packages {
		if !ps.DefaultIsAgent {
			t.Errorf("%s: default is not nio-agent", system)
		}
		if p := ps.CLI; p.Pname != "nio" || p.MainProgram != "nio" || p.ModRoot != "operator" || !reflect.DeepEqual(p.SubPackages, []string{"cmd/nio"}) ||
			p.PostInstall != "ln -s nio $out/bin/kubectl-nio" {
			t.Errorf("%s nio: pname %s, mainProgram %s, modRoot %s, subPackages %q, postInstall %q", system, p.Pname, p.MainProgram, p.ModRoot, p.SubPackages, p.PostInstall)
		}
		for name, p := range map[string]builderCall{"agent": ps.Agent, "operator": ps.Operator, "cli": ps.CLI} {
			where := system + " nio-" + name
			module, binary := name, "nio-"+name
			if name == "cli" {
				module, binary = "operator", "nio"
			}
			if p.Builder != "buildGo126Module" || p.System != system {
				t.Errorf("%s: built by %s for %s", where, p.Builder, p.System)
			}
			if p.Pname != binary || p.MainProgram != p.Pname || p.ModRoot != module || !reflect.DeepEqual(p.SubPackages, []string{"cmd/" + binary}) {
				t.Errorf("%s: pname %s, mainProgram %s, modRoot %s, subPackages %q", where, p.Pname, p.MainProgram, p.ModRoot, p.SubPackages)
			}
			if p.VendorHash == "" || p.VendorHash != ev.VendorHashes[module] {
				t.Errorf("%s: vendorHash %q, nix/vendor-hashes.nix has %q", where, p.VendorHash, ev.VendorHashes[module])
			}
			if p.Env["GOWORK"] != "off" || p.Env["CGO_ENABLED"] != "0" {
				t.Errorf("%s: env %v", where, p.Env)
			}
			for k, v := range ev.CurrentModEnv {
				if p.ModEnvCurrent[k] != v {
					t.Errorf("%s: overrideModAttrs dropped %s=%s from the vendor derivation's env: %v", where, k, v, p.ModEnvCurrent)
				}
			}
			if p.ModEnvCurrent["GOWORK"] != "off" || p.ModEnvOld["GOWORK"] != "off" {
				t.Errorf("%s: the vendor derivation runs in workspace mode: %v / %v", where, p.ModEnvCurrent, p.ModEnvOld)
			}
			var src []string
			for _, s := range p.Src {
				rel, _ := filepath.Rel(root, s)
				src = append(src, rel)
			}
			if want := []string{"api", "agent", "operator", "testkit"}; !reflect.DeepEqual(src, want) {
				t.Errorf("%s: source %q, want the Go modules %q", where, src, want)
			}
		}
	}
}

func TestFlakeSaysWhichNixpkgsWhenGo126IsMissing(t *testing.T) {
	env := nixtest.New(t)
	_, err := evalFlake(t, env, "--arg", "withGo126", "false")
	if err == nil {
		t.Fatal("evaluated without buildGo126Module")
	}
	if msg := exitStderr(err); !strings.Contains(msg, "buildGo126Module") || !strings.Contains(msg, "go.mod") {
		t.Errorf("message: %s", msg)
	}
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
