//go:build e2e

package e2e

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
)

// `DEMO_EXIT=1 make demo` runs the demo program: it exits 0 after the walk-through,
// and leaves no network namespace or process of its own behind.
func TestDemoExitsZeroAndLeavesNothingBehind(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	before := netnsList(t, ctx)

	bin := filepath.Join(t.TempDir(), "demo")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./operator/test/demo")
	build.Dir = stack.Root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build demo: %v\n%s", err, out)
	}
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = stack.Root
	cmd.Env = append(os.Environ(), "DEMO_EXIT=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("DEMO_EXIT=1 demo: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "Every step held") {
		t.Errorf("the demo exited 0 without saying every step held:\n%s", out.String())
	}
	if after := netnsList(t, ctx); after != before {
		t.Errorf("network namespaces before the demo:\n%s\nafter:\n%s", before, after)
	}
	// Everything the demo ran lives under its scratch directory, which it names.
	scratch := scratchDir.FindStringSubmatch(out.String())
	if scratch == nil {
		t.Fatalf("the demo's output names no scratch directory:\n%s", out.String())
	}
	if ps, _ := exec.CommandContext(ctx, "pgrep", "-f", scratch[1]).Output(); len(ps) > 0 {
		t.Errorf("processes of the demo still run: %s", ps)
	}
	if _, err := os.Stat(scratch[1]); !os.IsNotExist(err) {
		t.Errorf("the demo's scratch directory %s is still there (%v)", scratch[1], err)
	}
}

var scratchDir = regexp.MustCompile(`(/\S*/nio-e2e-[0-9]+)/`)

func netnsList(t *testing.T, ctx context.Context) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
