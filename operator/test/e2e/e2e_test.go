//go:build e2e

// Package e2e runs the usage guide end to end with real processes: kube-apiserver and
// etcd from bin/k8s with NIO installed by ./install.sh, the nio-operator binary as its
// ServiceAccount, the demo host (real sshd and real nio-agent with real Nix in a
// network and mount namespace of their own) and git http-backend with token auth —
// see package harness. One stack is shared by the package (TestMain); the tests build
// on one another in the order of their files (step1_… to step8_…), and each first
// makes sure the guide's walk-through has run, so any one of them can run alone.
//
// Run with `make e2e` (as root: the demo host's namespaces), or
// `go test -tags e2e ./operator/test/e2e/`.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/test/harness"
)

var (
	stack     *harness.Stack
	narration *os.File

	guideOnce sync.Once
	guideErr  error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	narration, err = os.CreateTemp("", "nio-e2e-narration-*.log")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.Remove(narration.Name())
	defer narration.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	stack, err = harness.Up(ctx, narration)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: start the stack: %v\n%s", err, tail(narration.Name(), 60))
		return 1
	}
	// Ctrl-C on `go test` reaches this process too: clean up before going.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "e2e: interrupted; cleaning up")
		if err := stack.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: clean up:", err)
		}
		os.Remove(narration.Name())
		os.Exit(1)
	}()
	code := m.Run()
	signal.Stop(sig)
	if err := stack.Down(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: clean up:", err)
		code = 1
	}
	return code
}

// walkGuide runs the guide's steps once per package run, for whichever test comes
// first.
func walkGuide(t *testing.T) {
	t.Helper()
	guideOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		guideErr = stack.WalkGuide(ctx)
	})
	if guideErr != nil {
		t.Fatalf("the usage guide's walk-through failed: %v", guideErr)
	}
}

// testContext is a context for one test, and a failure report of the logs when the
// test fails.
func testContext(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("narration (tail):\n%s\n%s", tail(narration.Name(), 40), stack.LogTails(40))
		}
	})
	return ctx
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kubectl runs the real kubectl as the administrator and fails the test on error.
func kubectl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := stack.Control.Quiet(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// configuration reads the guide's NixosConfiguration.
func configuration(t *testing.T, ctx context.Context) *nio.NixosConfiguration {
	t.Helper()
	c, err := stack.Control.Configuration(ctx, harness.GuideNamespace, harness.GuideConfiguration)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
