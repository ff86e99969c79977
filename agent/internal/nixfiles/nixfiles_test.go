package nixfiles

import (
	"io/fs"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/homystack/nio/testkit/nixtest"
)

// repoRoot is found from this file's path, so the test works from any directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

func TestEveryNixFileParses(t *testing.T) {
	env := nixtest.New(t)
	root := repoRoot(t)
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "vendor" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".nix") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"nix/flake.nix", "nix/module.nix", "nix/package.nix", "nix/tests/eval-module.nix", "nix/tests/eval-flake.nix", "testkit/nixtest/flakes/basic/flake.nix"} {
		found := false
		for _, f := range files {
			found = found || strings.HasSuffix(f, filepath.FromSlash(must))
		}
		if !found {
			t.Errorf("%s not found under %s", must, root)
		}
	}
	for _, f := range files {
		cmd := exec.Command("nix-instantiate", "--parse", f)
		cmd.Env = env.Environ()
		if out, err := cmd.CombinedOutput(); err != nil {
			rel, _ := filepath.Rel(root, f)
			t.Errorf("%s does not parse: %v\n%s", rel, err, out)
		}
	}
	t.Logf("parsed %d .nix files", len(files))
}
