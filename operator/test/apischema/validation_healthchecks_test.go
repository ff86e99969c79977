package apischema

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

func httpCheck(url string) nio.HealthCheck {
	return nio.HealthCheck{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: url}}
}

func withChecks(checks ...nio.HealthCheck) func(*nio.NixosConfiguration) {
	return func(c *nio.NixosConfiguration) { c.Spec.HealthChecks = &nio.HealthChecks{Checks: checks} }
}

func withHealth(mutate func(*nio.HealthChecks)) func(*nio.NixosConfiguration) {
	return func(c *nio.NixosConfiguration) {
		c.Spec.HealthChecks = &nio.HealthChecks{Checks: []nio.HealthCheck{httpCheck("http://127.0.0.1:8080/health")}}
		mutate(c.Spec.HealthChecks)
	}
}

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

// TestAPIServerRefusesBadHealthChecks: the rules of spec.healthChecks are the API
// server's — one kind per check, a units check that checks something, an http(s)
// URL without credentials whose host is this host unless allowRemote, an absolute
// command, bounded durations, not with action boot.
func TestAPIServerRefusesBadHealthChecks(t *testing.T) {
	ns := newNamespace(t)
	const (
		oneKind    = "a health check sets exactly one of units, http, command"
		hostPolicy = "the URL's host must be localhost or an IP address of the host itself"
		urlForm    = "url must be an http:// or https:// URL with a host and without credentials"
	)
	cases := []struct {
		name   string
		mutate func(*nio.NixosConfiguration)
		want   string
	}{
		{"two kinds", withChecks(nio.HealthCheck{Name: "x", HTTP: &nio.HTTPHealthCheck{URL: "http://127.0.0.1/"},
			Units: &nio.UnitsHealthCheck{Names: []string{"nginx"}}}), oneKind},
		{"no kind", withChecks(nio.HealthCheck{Name: "x"}), oneKind},
		{"units checking nothing", withChecks(nio.HealthCheck{Name: "x", Units: &nio.UnitsHealthCheck{}}), "a units check needs names, noNewFailures, or both"},
		{"unit name with a glob", withChecks(nio.HealthCheck{Name: "x", Units: &nio.UnitsHealthCheck{Names: []string{"nginx*"}}}), "spec.healthChecks.checks[0].units.names[0]"},
		{"ftp URL", withChecks(httpCheck("ftp://127.0.0.1/x")), urlForm},
		{"URL with credentials", withChecks(httpCheck("http://admin:secret@127.0.0.1/")), urlForm},
		{"URL without a host", withChecks(httpCheck("http:///health")), urlForm},
		{"DNS name", withChecks(httpCheck("http://example.com/")), hostPolicy},
		{"localhost as a prefix", withChecks(httpCheck("http://localhost.example.com/")), hostPolicy},
		{"IP as a prefix", withChecks(httpCheck("http://127.0.0.1.example.com/")), hostPolicy},
		{"expectStatus out of range", withChecks(nio.HealthCheck{Name: "x", HTTP: &nio.HTTPHealthCheck{URL: "http://127.0.0.1/", ExpectStatus: 700}}), "spec.healthChecks.checks[0].http.expectStatus"},
		{"relative command", withChecks(nio.HealthCheck{Name: "x", Command: &nio.CommandHealthCheck{Command: []string{"pg_isready"}}}), "command[0] must be an absolute path"},
		{"command timeout zero", withChecks(nio.HealthCheck{Name: "x", Command: &nio.CommandHealthCheck{Command: []string{"/bin/true"}, Timeout: dur(0)}}), "the command's timeout must be positive"},
		{"name with a space", withChecks(nio.HealthCheck{Name: "my check", Units: &nio.UnitsHealthCheck{NoNewFailures: true}}), "spec.healthChecks.checks[0].name"},
		{"duplicate names", withChecks(httpCheck("http://127.0.0.1/"), httpCheck("http://127.0.0.1:81/")), "Duplicate value"},
		{"no checks", withChecks(), "spec.healthChecks.checks"},
		{"timeout over an hour", withHealth(func(h *nio.HealthChecks) { h.Timeout = dur(61 * time.Minute) }), "healthChecks.timeout must be positive and at most 1h"},
		{"timeout zero", withHealth(func(h *nio.HealthChecks) { h.Timeout = dur(0) }), "healthChecks.timeout must be positive and at most 1h"},
		{"interval too short", withHealth(func(h *nio.HealthChecks) { h.Interval = dur(10 * time.Millisecond) }), "healthChecks.interval must be at least 100ms"},
		{"with action boot", func(c *nio.NixosConfiguration) {
			withHealth(func(*nio.HealthChecks) {})(c)
			c.Spec.Action = nio.ActionBoot
		}, "healthChecks need action switch or test"},
	}
	for i, tc := range cases {
		c := validConfiguration()
		tc.mutate(c)
		c.Name, c.Namespace = fmt.Sprintf("bad-health-%d", i), ns
		expectInvalid(t, "healthChecks "+tc.name, c, tc.want)
	}
}

// TestAPIServerAcceptsHealthChecksAndDefaultsThem: loopback and own-address URLs
// (IPv4, bracketed IPv6, localhost), any host with allowRemote, units by name or
// new failures only, action test, a timeout of exactly 1h; the defaults are filled in.
func TestAPIServerAcceptsHealthChecksAndDefaultsThem(t *testing.T) {
	ns := newNamespace(t)
	good := []func(*nio.NixosConfiguration){
		withChecks(httpCheck("http://127.0.0.1:8080/health")),
		withChecks(httpCheck("http://[::1]:80/")),
		withChecks(httpCheck("https://localhost/status?full=1")),
		withChecks(httpCheck("http://LOCALHOST.:9000")),
		withChecks(httpCheck("http://192.168.1.100:8080/health")),
		withChecks(nio.HealthCheck{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: "https://example.com/", AllowRemote: true}}),
		withChecks(nio.HealthCheck{Name: "u", Units: &nio.UnitsHealthCheck{Names: []string{"nginx", "postgresql.service"}}}),
		withChecks(nio.HealthCheck{Name: "u", Units: &nio.UnitsHealthCheck{NoNewFailures: true}}),
		withHealth(func(h *nio.HealthChecks) { h.Timeout, h.Interval = dur(time.Hour), dur(100*time.Millisecond) }),
		func(c *nio.NixosConfiguration) {
			withHealth(func(*nio.HealthChecks) {})(c)
			c.Spec.Action = nio.ActionTest
		},
	}
	for i, mutate := range good {
		c := validConfiguration()
		mutate(c)
		c.Name, c.Namespace = fmt.Sprintf("good-health-%d", i), ns
		if err := env.Client.Create(context.Background(), c); err != nil {
			t.Errorf("valid healthChecks %+v refused: %v", c.Spec.HealthChecks, err)
		}
	}

	c := validConfiguration()
	c.Name, c.Namespace = "health-defaults", ns
	withChecks(
		nio.HealthCheck{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: "http://127.0.0.1:8080/health"}},
		nio.HealthCheck{Name: "db", Command: &nio.CommandHealthCheck{Command: []string{"/run/current-system/sw/bin/pg_isready"}}},
	)(c)
	if err := env.Client.Create(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	got := &nio.NixosConfiguration{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(c), got); err != nil {
		t.Fatal(err)
	}
	h := got.Spec.HealthChecks
	if h.Timeout == nil || h.Timeout.Duration != 2*time.Minute || h.Interval == nil || h.Interval.Duration != time.Second ||
		h.Checks[0].HTTP.ExpectStatus != 200 || h.Checks[1].Command.Timeout == nil || h.Checks[1].Command.Timeout.Duration != 30*time.Second {
		t.Errorf("stored healthChecks %+v (web %+v, db %+v), want timeout 2m, interval 1s, expectStatus 200, command timeout 30s",
			h, h.Checks[0].HTTP, h.Checks[1].Command)
	}
}
