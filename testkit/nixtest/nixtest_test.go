package nixtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const workerToplevel = `nixosConfigurations."worker".config.system.build.toplevel`

func TestBasicFixtureVersionsGiveDistinctSystemsThatActivateObservably(t *testing.T) {
	env := New(t)
	v1 := env.Build(t, CopyFlake(t, "basic", map[string]string{VarVersion: "one"}), workerToplevel)
	v2 := env.Build(t, CopyFlake(t, "basic", map[string]string{VarVersion: "two"}), workerToplevel)
	if v1 == v2 {
		t.Fatalf("two versions built the same store path %s", v1)
	}
	if !strings.HasSuffix(v1, "-nixos-system-worker-one") {
		t.Errorf("store path %s does not name the version", v1)
	}

	run := func(system, action string) ([]byte, error) {
		cmd := exec.Command(filepath.Join(system, "bin", "switch-to-configuration"), action)
		cmd.Env = env.Environ()
		return cmd.CombinedOutput()
	}
	if out, err := run(v1, "switch"); err != nil {
		t.Fatalf("switch: %v\n%s", err, out)
	}
	if out, err := run(v2, "boot"); err != nil {
		t.Fatalf("boot: %v\n%s", err, out)
	}
	current, err := os.Readlink(env.CurrentSystemLink())
	if err != nil || current != v1 {
		t.Fatalf("current-system = %q (%v), want %s: boot must not change it", current, err, v1)
	}
	want := []string{"switch " + v1, "boot " + v2}
	if got := env.Activations(t); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("activations = %q, want %q", got, want)
	}
}

func TestActivationFailVariantExitsNonZero(t *testing.T) {
	env := New(t)
	sys := env.Build(t, CopyFlake(t, "basic", map[string]string{VarVersion: "bad", VarActivation: "fail"}), workerToplevel)
	cmd := exec.Command(filepath.Join(sys, "bin", "switch-to-configuration"), "switch")
	cmd.Env = env.Environ()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "failed on purpose") {
		t.Fatalf("want a failing activation with a message, got err=%v out=%s", err, out)
	}
	if _, err := os.Lstat(env.CurrentSystemLink()); !os.IsNotExist(err) {
		t.Errorf("a failed activation changed current-system (%v)", err)
	}
}

func TestFailingFixturePrintsRecognisableBuildErrors(t *testing.T) {
	env := New(t)
	dir := CopyFlake(t, "failing", nil)
	cmd := exec.Command("nix", "build", "-L", "--out-link", filepath.Join(t.TempDir(), "result"), "path:"+dir+"#"+workerToplevel)
	cmd.Env = env.Environ()
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("the failing fixture built")
	}
	for _, line := range []string{FailingBuildLine, FailingBuildError} {
		if !strings.Contains(string(out), line) {
			t.Errorf("output lacks %q:\n%s", line, out)
		}
	}
}

func TestModuleFixtureBuildsThroughStubNixpkgs(t *testing.T) {
	env := New(t)
	dir := CopyFlake(t, "module", map[string]string{VarVersion: "m1"})
	link := filepath.Join(t.TempDir(), "result")
	cmd := exec.Command("nix-build", "<nixpkgs/nixos>", "-A", "system",
		"-I", "nixpkgs="+StubNixpkgs(t), "-I", "nixos-config="+filepath.Join(dir, ModuleFile), "--out-link", link)
	cmd.Env = env.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nix-build: %v\n%s", err, out)
	}
	target, err := os.Readlink(link)
	if err != nil || !strings.HasSuffix(target, "-nixos-system-worker-m1") {
		t.Fatalf("out-link = %q (%v)", target, err)
	}
	if _, err := os.Stat(filepath.Join(target, "bin", "switch-to-configuration")); err != nil {
		t.Fatal(err)
	}
}

func TestFixturesParse(t *testing.T) {
	New(t)
	for _, name := range []string{"basic", "failing", "sleep", "module", "systemd-host"} {
		dir := CopyFlake(t, name, nil)
		files, _ := filepath.Glob(filepath.Join(dir, "*.nix"))
		if len(files) == 0 {
			t.Fatalf("fixture %s has no .nix files", name)
		}
		for _, f := range files {
			if out, err := exec.Command("nix-instantiate", "--parse", f).CombinedOutput(); err != nil {
				t.Errorf("%s/%s: %v\n%s", name, filepath.Base(f), err, out)
			}
		}
	}
}
