package simexec

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/nixos"
)

func discard(nixos.Stream, string) {}

func flakeDir(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBuildNamesTheSystemAfterTheSourceContent(t *testing.T) {
	x := New(Options{})
	ctx := context.Background()
	a, err := x.Build(ctx, nixos.Target{FlakeDir: flakeDir(t, "v1"), Attr: "web"}, "", discard)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := x.Build(ctx, nixos.Target{FlakeDir: flakeDir(t, "v1"), Attr: "web"}, "", discard)
	changed, _ := x.Build(ctx, nixos.Target{FlakeDir: flakeDir(t, "v2"), Attr: "web"}, "", discard)
	if a != again {
		t.Errorf("the same source in another directory built %s, then %s", a, again)
	}
	if a == changed {
		t.Errorf("a changed source built the same system %s", a)
	}
	if builds, _ := x.Counts(); builds != 3 {
		t.Errorf("counted %d builds, want 3", builds)
	}
}

func TestBuildTakesTheConfiguredTimeAndStopsWithItsContext(t *testing.T) {
	x := New(Options{BuildTime: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := x.Build(ctx, nixos.Target{FlakeDir: flakeDir(t, "v1"), Attr: "web"}, "", discard)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a build of an ended context returned %v, want context.Canceled", err)
	}
	if builds, _ := x.Counts(); builds != 0 {
		t.Errorf("a cancelled build was counted")
	}
}

func TestProfileAndRunningSystemFollowSwitchAndRollback(t *testing.T) {
	x := New(Options{})
	ctx := context.Background()
	for _, p := range []string{"/nix/store/a-sys", "/nix/store/b-sys"} {
		if err := x.SetProfile(ctx, p, discard); err != nil {
			t.Fatal(err)
		}
		if err := x.Activate(ctx, p, "switch", nixos.Activation{Unit: "u"}, discard); err != nil {
			t.Fatal(err)
		}
	}
	if gen, _ := x.Generation(); gen != 2 {
		t.Fatalf("generation %d, want 2", gen)
	}
	if cur, _ := x.CurrentSystem(); cur != "/nix/store/b-sys" {
		t.Fatalf("running %s", cur)
	}
	if booted, _ := x.BootedSystem(); booted != "/nix/store/a-sys" {
		t.Fatalf("booted %s, want the first system", booted)
	}
	// A rollback: the profile back at 1, the previous system activated again.
	if err := x.SwitchGeneration(ctx, 1, discard); err != nil {
		t.Fatal(err)
	}
	if err := x.Activate(ctx, "/nix/store/a-sys", "switch", nixos.Activation{Unit: "u"}, discard); err != nil {
		t.Fatal(err)
	}
	if gen, _ := x.Generation(); gen != 1 {
		t.Fatalf("generation %d after rollback, want 1", gen)
	}
	if cur, _ := x.CurrentSystem(); cur != "/nix/store/a-sys" {
		t.Fatalf("running %s after rollback", cur)
	}
	if err := x.SwitchGeneration(ctx, 7, discard); err == nil {
		t.Fatal("switched to a generation that does not exist")
	}
	// boot changes the profile only.
	if err := x.Activate(ctx, "/nix/store/c-sys", "boot", nixos.Activation{Unit: "u"}, discard); err != nil {
		t.Fatal(err)
	}
	if cur, _ := x.CurrentSystem(); cur != "/nix/store/a-sys" {
		t.Fatalf("boot changed the running system to %s", cur)
	}
}

// The simulation must never be one flag away on a real host: nio-agent does not link it.
func TestNioAgentDoesNotLinkTheSimulation(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/homystack/nio/agent/cmd/nio-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !slices.Contains(deps, "github.com/homystack/nio/agent/internal/server") {
		t.Fatalf("go list gave no dependency list: %q", out)
	}
	if slices.Contains(deps, "github.com/homystack/nio/agent/internal/simexec") {
		t.Fatal("nio-agent links the simulated executor")
	}
}
