// Package nixtest runs real Nix in tests, offline: an Env holds the settings every nix
// child process needs (no substituters, no sandbox, an empty flake registry), and
// CopyFlake copies an embedded fixture flake into a fresh directory.
//
// The fixtures (under flakes/) are input-less flakes whose NixOS "toplevel" is a plain
// builtins.derivation with a real bin/switch-to-configuration. That script emulates
// activation observably: when NIO_FIXTURE_STATE is set it appends
// "<action> <store path>" to $NIO_FIXTURE_STATE/activations.log and, for switch and
// test, points $NIO_FIXTURE_STATE/current-system at its own store path — what
// /run/current-system is on NixOS. Env sets NIO_FIXTURE_STATE to Env.StateDir.
//
// Fixtures:
//   - basic: nixosConfigurations.{worker,minimal}; the system's name and content
//     depend on version.txt (VarVersion); activation.txt (VarActivation) = "fail"
//     makes switch-to-configuration print an error and exit 1.
//   - failing: evaluates, but the build fails after printing the lines
//     FailingBuildLine and FailingBuildError.
//   - sleep: the build sleeps for the seconds in sleep.txt (VarSleep) first.
//   - systemd-host: the stand-in system of the systemd test host, with a locked
//     git+file input (see its flake.nix); its switch-to-configuration acts on the
//     real /run/current-system and systemd of that host.
//   - module: configuration.nix, a NixOS module stand-in built with the stub nixpkgs
//     of StubNixpkgs: nix-build '<nixpkgs/nixos>' -A system -I nixos-config=<file>.
package nixtest

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Variable files the fixtures read. Pass them as CopyFlake vars.
const (
	// VarVersion is the fixture's "commit": a different value, a different store path.
	VarVersion = "version.txt"
	// VarActivation set to "fail" makes switch-to-configuration fail.
	VarActivation = "activation.txt"
	// VarSleep is how many seconds the sleep fixture's build sleeps.
	VarSleep = "sleep.txt"
	// varSystem is the Nix system the derivations are for; CopyFlake writes it.
	varSystem = "system.txt"
)

// Lines the failing fixture's build prints (stdout and stderr of the builder).
const (
	FailingBuildLine  = "nio-fixture: compiling the world"
	FailingBuildError = "nio-fixture: error: the build fails on purpose"
)

// ModuleFile is the module fixture's configuration file, relative to its directory.
const ModuleFile = "configuration.nix"

//go:embed flakes
var fixtures embed.FS

// Env is an offline Nix configuration for one test.
type Env struct {
	registry string
	config   string
	state    string
}

// New checks that nix is installed and prepares the offline settings. It fails the
// test (never skips) when nix is missing.
func New(t testing.TB) *Env {
	t.Helper()
	for _, bin := range []string{"nix", "nix-build", "nix-env", "nix-instantiate"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("nixtest: %s not found on PATH (%v): install Nix with hack/deps.sh", bin, err)
		}
	}
	dir := t.TempDir()
	registry := filepath.Join(dir, "registry.json")
	config, err := WriteOfflineConfig(registry)
	if err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	state := filepath.Join(dir, "fixture-state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	return &Env{registry: registry, config: config, state: state}
}

// WriteOfflineConfig writes an empty flake registry to registryPath and returns the
// offline NIX_CONFIG value that points at it. New uses it; programs that are not
// tests (the demo) call it directly.
func WriteOfflineConfig(registryPath string) (string, error) {
	if err := os.WriteFile(registryPath, []byte(`{"flakes":[],"version":2}`+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write flake registry: %w", err)
	}
	return strings.Join([]string{
		"experimental-features = nix-command flakes",
		"sandbox = false",
		"substituters =",
		"build-users-group =",
		"flake-registry = " + registryPath,
		"warn-dirty = false",
	}, "\n"), nil
}

// Config is the NIX_CONFIG value: the offline settings.
func (e *Env) Config() string { return e.config }

// RegistryPath is the empty flake registry file the settings point at.
func (e *Env) RegistryPath() string { return e.registry }

// StateDir is where the fixtures' switch-to-configuration records activations
// (NIO_FIXTURE_STATE).
func (e *Env) StateDir() string { return e.state }

// CurrentSystemLink is the symlink the fixtures' switch/test point at the activated
// system: pass it where the code under test expects /run/current-system.
func (e *Env) CurrentSystemLink() string { return filepath.Join(e.state, "current-system") }

// Activations returns the lines of activations.log, "<action> <store path>" each, in
// order; nil when nothing was activated.
func (e *Env) Activations(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.state, "activations.log"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("nixtest: read activations: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// Environ is os.Environ() with NIX_CONFIG set to the offline settings and
// NIO_FIXTURE_STATE to StateDir, for the environment of nix child processes (or of
// a process that starts them).
func (e *Env) Environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "NIX_CONFIG=") || strings.HasPrefix(kv, "NIO_FIXTURE_STATE=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "NIX_CONFIG="+e.config, "NIO_FIXTURE_STATE="+e.state)
}

// Setenv sets NIX_CONFIG and NIO_FIXTURE_STATE in this process for the test's
// duration (t.Setenv), for code that starts nix with the inherited environment.
func (e *Env) Setenv(t *testing.T) {
	t.Helper()
	t.Setenv("NIX_CONFIG", e.config)
	t.Setenv("NIO_FIXTURE_STATE", e.state)
}

// CopyFlake copies fixture name into a fresh temporary directory and writes each var
// as a file in it (file name → content), so one fixture yields a different store path
// per "commit". It returns the directory; build it as "path:<dir>#...".
func CopyFlake(t testing.TB, name string, vars map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := WriteFlake(dir, name, vars); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	return dir
}

// WriteFlake is CopyFlake into an existing directory dst, for programs that are not
// tests (the demo); it overwrites files of the same names.
func WriteFlake(dst, name string, vars map[string]string) error {
	if err := writeFixture(name, dst); err != nil {
		return err
	}
	if name != "module" {
		if err := writeFixture("common", dst); err != nil {
			return err
		}
		if err := writeVarFile(dst, varSystem, NixSystem()); err != nil {
			return err
		}
	}
	for file, content := range vars {
		if err := writeVarFile(dst, file, content); err != nil {
			return err
		}
	}
	return nil
}

// StubNixpkgs copies a stand-in nixpkgs into a fresh directory and returns it. Its
// nixos/default.nix evaluates <nixos-config> (a module like the module fixture's) and
// returns { system = <toplevel>; }; put it on NIX_PATH as nixpkgs=<dir>.
func StubNixpkgs(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	copyFixture(t, "nixpkgs-stub", dir)
	copyFixture(t, "common", dir)
	return dir
}

// NixSystem is the Nix system name of this machine, e.g. "x86_64-linux".
func NixSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}

func copyFixture(t testing.TB, name, dst string) {
	t.Helper()
	if err := writeFixture(name, dst); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
}

func writeFixture(name, dst string) error {
	root := path.Join("flakes", name)
	if _, err := fs.Stat(fixtures, root); err != nil {
		return fmt.Errorf("no fixture %q: %w", name, err)
	}
	err := fs.WalkDir(fixtures, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		target := filepath.Join(dst, filepath.FromSlash(rel))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := fixtures.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		return fmt.Errorf("copy fixture %s: %w", name, err)
	}
	return nil
}

func writeVarFile(dir, file, content string) error {
	if strings.ContainsAny(file, `/\`) || file == ".." || file == "." || file == "" {
		return fmt.Errorf("var %q must be a plain file name", file)
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}

// Build runs `nix build --out-link <dir>/result path:<flake>#<attr>` with the Env's
// settings and returns the built store path; a helper for tests that need a system
// built outside the code under test.
func (e *Env) Build(t testing.TB, flake, attr string) string {
	t.Helper()
	link := filepath.Join(t.TempDir(), "result")
	cmd := exec.Command("nix", "build", "--out-link", link, "path:"+flake+"#"+attr)
	cmd.Env = e.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nixtest: nix build %s#%s: %v\n%s", flake, attr, err, out)
	}
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatalf("nixtest: read out-link: %v", err)
	}
	return target
}

// String describes the Env for test logs.
func (e *Env) String() string { return fmt.Sprintf("nixtest.Env(state=%s)", e.state) }
