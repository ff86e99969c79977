package controller

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// flakyProxy forwards to a git server and answers 503 to ref advertisements
// (ls-remote) while armed (failures > 0), as a git server behind a load balancer
// does during a restart.
type flakyProxy struct {
	*httptest.Server
	failures atomic.Int32
	failed   atomic.Int32
}

func newFlakyProxy(t *testing.T, target string) *flakyProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/info/refs") && p.failures.Add(-1) >= 0 {
			p.failed.Add(1)
			http.Error(w, "upstream restarting", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

// TestRequestedAtSurvivesATransientSourceError: a requestedAt whose pass fails on a
// transient ls-remote error is not eaten: the retry still forces the apply, and only
// then is the request recorded as handled.
func TestRequestedAtSurvivesATransientSourceError(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	proxy := newFlakyProxy(t, f.srv.URL)
	fleet := hosttest.NewFleet()
	f.op = startOperator(t, f.ns, fleet, nil)
	// Hourly: only the request can bring a second apply.
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) {
		c.Spec.GitRepo = proxy.URL + strings.TrimPrefix(f.repo.URL(), f.srv.URL)
		c.Spec.Interval.Duration = time.Hour
	}))
	f.waitApplied("worker-config", "worker-01", first)
	host := fleet.Host("worker-01")

	// The server fails while the request's pass (started by the annotation's change
	// within milliseconds) and its first retries run.
	proxy.failures.Store(1 << 30)
	c := getConfig(t, f.ns, "worker-config")
	patch := client.MergeFrom(c.DeepCopy())
	c.Annotations = map[string]string{nio.RequestedAtAnnotation: "2026-01-01T00:00:00Z"}
	if err := env.Client.Patch(context.Background(), c, patch); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	c = getConfig(t, f.ns, "worker-config")
	if proxy.failed.Load() == 0 {
		t.Fatal("no ls-remote reached the failing server")
	}
	if c.Status.LastHandledRequestedAt != "" || len(host.Ops()) != 1 {
		t.Fatalf("while ls-remote fails: lastHandledRequestedAt %q, %d applies; want the request pending, 1 apply",
			c.Status.LastHandledRequestedAt, len(host.Ops()))
	}
	proxy.failures.Store(0)
	eventually(t, 30*time.Second, "the requested apply", func() error {
		c := getConfig(t, f.ns, "worker-config")
		if n := len(host.Ops()); n != 2 || c.Status.LastHandledRequestedAt != "2026-01-01T00:00:00Z" {
			return errorf("%d applies, lastHandledRequestedAt %q", n, c.Status.LastHandledRequestedAt)
		}
		return nil
	})
}
