//go:build e2e

package systemdhost

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// varService is the fixture's service.txt: the system's nio-fixture-web.service,
// "ok" (runs) or "crash" (dies on its configuration, never seen active).
const varService = "service.txt"

// unusedPort is a port nothing on the host listens on: what the HTTP check asks for
// when the new system "doesn't open" its port.
const unusedPort = 18089

// Health checks run by the agent on the real systemd host, after activation and
// before the operator confirms: a service that comes up passes; one that dies after
// the switch, or a port the new system doesn't open, makes the agent re-activate the
// previous generation, and the operator records RolledBack with reason
// HealthCheckFailed naming the check — the Machine keeps the commit it ran.
func TestHealthChecksOnTheSystemdHost(t *testing.T) {
	setUp(t)
	ctx := testContext(t, 12*time.Minute)
	t.Cleanup(func() {
		// Later tests (and reruns) start from the plain configuration on a good commit.
		ctx := context.Background()
		if err := apply(ctx, "configuration.yaml", configuration("switch")); err != nil {
			t.Error(err)
			return
		}
		p, err := push(nil)
		if err != nil {
			t.Error(err)
			return
		}
		if err := waitApplied(ctx, p.commit); err != nil {
			t.Errorf("back to a plain configuration: %v", err)
		}
	})

	units := `
    - name: web
      units:
        names: [nio-fixture-web]
        noNewFailures: true`
	if err := apply(ctx, "configuration.yaml", configurationWithHealth(units)); err != nil {
		t.Fatal(err)
	}

	good := mustPush(t, map[string]string{varService: "ok"})
	t.Run("a service that comes up passes", func(t *testing.T) {
		if err := waitApplied(ctx, good.commit); err != nil {
			t.Fatal(err)
		}
		conf := configurationNow(t, ctx)
		if h := historyOf(conf, good.commit); h == nil || h.Result != nio.ResultSucceeded || h.Transport != nio.TransportAgent {
			t.Fatalf("history entry of %s: %+v, want a succeeded agent apply", good.commit, h)
		}
		if state, err := host.UnitProperty(ctx, "nio-fixture-web.service", "ActiveState"); err != nil || state != "active" {
			t.Errorf("nio-fixture-web.service ActiveState = %q (%v), want active", state, err)
		}
	})
	goodSystem := configurationNow(t, ctx).Status.AppliedSystem

	t.Run("a service that dies after the switch rolls back", func(t *testing.T) {
		bad := mustPush(t, map[string]string{varService: "crash"})
		h := waitHealthFailed(t, ctx, bad.commit)
		if !strings.Contains(h.Message, "web") || !strings.Contains(h.Message, "nio-fixture-web") {
			t.Errorf("history message %q does not name the check and its unit", h.Message)
		}
		assertBackOn(t, ctx, good.commit, goodSystem)
		// The previous system's switch started its service again.
		if state, err := host.UnitProperty(ctx, "nio-fixture-web.service", "ActiveState"); err != nil || state != "active" {
			t.Errorf("after the rollback nio-fixture-web.service ActiveState = %q (%v), want active again", state, err)
		}
		acts, err := host.Activations()
		if err != nil {
			t.Fatal(err)
		}
		crashed := false
		for _, a := range acts {
			crashed = crashed || strings.Contains(a, "done switch") && strings.HasSuffix(strings.Fields(a)[2], "-host-"+bad.version)
		}
		if !crashed {
			t.Errorf("the crashing system was never activated, so nothing was checked:\n%s", strings.Join(acts, "\n"))
		}
	})

	t.Run("a port the new system doesn't open rolls back", func(t *testing.T) {
		httpCheck := fmt.Sprintf(`
    - name: http
      http:
        url: http://127.0.0.1:%d/healthz`, unusedPort)
		if err := apply(ctx, "configuration.yaml", configurationWithHealth(httpCheck)); err != nil {
			t.Fatal(err)
		}
		p := mustPush(t, map[string]string{varService: "ok"})
		h := waitHealthFailed(t, ctx, p.commit)
		if !strings.Contains(h.Message, "http") || !strings.Contains(h.Message, fmt.Sprint(unusedPort)) {
			t.Errorf("history message %q does not name the check and its URL", h.Message)
		}
		assertBackOn(t, ctx, good.commit, goodSystem)
	})
}

// configurationWithHealth is the suite's configuration with the health checks items
// (YAML list items indented under checks).
func configurationWithHealth(checks string) string {
	return configuration("switch") + `  healthChecks:
    timeout: 15s
    interval: 500ms
    checks:` + checks + "\n"
}

// waitHealthFailed waits until commit's apply is recorded RolledBack with Ready=False,
// reason HealthCheckFailed, and returns its history entry.
func waitHealthFailed(t *testing.T, ctx context.Context, commit string) nio.HistoryEntry {
	t.Helper()
	var entry nio.HistoryEntry
	if err := waitConfiguration(ctx, "health check failure of "+commit+" recorded", 4*time.Minute, func(c *nio.NixosConfiguration) (bool, string) {
		ready := meta(c.Status.Conditions, nio.ConditionReady)
		h := historyOf(c, commit)
		if h != nil {
			entry = *h
		}
		return h != nil && h.Result == nio.ResultRolledBack && ready != nil && ready.Status == "False" && ready.Reason == "HealthCheckFailed",
			fmt.Sprintf("history %+v; %s", h, readyText(c.Status.Conditions))
	}); err != nil {
		t.Fatal(err)
	}
	return entry
}

// assertBackOn checks that the host runs system again and that both the
// configuration and the Machine still name commit.
func assertBackOn(t *testing.T, ctx context.Context, commit, system string) {
	t.Helper()
	if current, err := host.Link(ctx, "/run/current-system"); err != nil || current != system {
		t.Errorf("/run/current-system = %q (%v), want the previous %q", current, err, system)
	}
	if c := configurationNow(t, ctx); c.Status.AppliedCommit != commit {
		t.Errorf("configuration appliedCommit = %s, want %s (never a commit that failed its checks)", c.Status.AppliedCommit, commit)
	}
	if m := machineNow(t, ctx); m.Status.AppliedCommit != commit {
		t.Errorf("Machine appliedCommit = %s, want %s", m.Status.AppliedCommit, commit)
	}
}
