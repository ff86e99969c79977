package controller

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/testkit/facterfixture"
	"github.com/homystack/nio/testkit/gittest"
)

// requestLog records the requests an operator sends the API server.
type requestLog struct {
	mu   sync.Mutex
	reqs []string
}

func (l *requestLog) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.reqs = append(l.reqs, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		l.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

// take returns the requests since the last take and forgets them.
func (l *requestLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.reqs
	l.reqs = nil
	return out
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestIdleFleetCostsNoAPIRequests: the usage guide's configuration (git credentials,
// a secretRef file, an inline file and the facter report), applied, with nothing to
// do. Polled every second and its Machine probed every 2 s, it sends the API server
// nothing: the probes see nothing new (no status write; the agent answers, so no SSH
// key Secret read), and the configuration's passes take the cache, the render memo
// (no Secret or facts ConfigMap read) and one ref listing per interval. At 1000
// Machines each of these would be a thousand requests a minute.
func TestIdleFleetCostsNoAPIRequests(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	f.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-secret", Namespace: f.ns},
		Data: map[string][]byte{"password": []byte("hunter2-but-longer")}})
	reqs := &requestLog{}
	fleet := hosttest.NewFleet()
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.FactsReport = facterfixture.Report })
	f.op = startOperatorWith(t, operatorOptions{namespaces: []string{f.ns}, fleet: fleet, requests: reqs})
	inline := "{ services.postgresql.enable = true; }\n"
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) {
		c.Spec.AdditionalFiles = []nio.AdditionalFile{
			{Path: "secrets/database-password", Value: nio.AdditionalFileValue{SecretRef: &nio.SecretKeyReference{Name: "db-secret"}}},
			{Path: "config/custom.nix", Value: nio.AdditionalFileValue{Inline: &inline}},
			{Path: "facts/system-info", Value: nio.AdditionalFileValue{NixosFacter: ptrTo(true)}},
		}
	}))
	f.waitApplied("worker-config", "worker-01", first)
	eventually(t, 30*time.Second, "the Machine running the applied system, with facts", func() error {
		m, c := getMachine(t, f.ns, "worker-01"), getConfig(t, f.ns, "worker-config")
		if m.Status.Facts == nil || m.Status.System == nil || m.Status.System.CurrentSystem != c.Status.AppliedSystem {
			return errorf("facts %v, system %+v, applied %q", m.Status.Facts, m.Status.System, c.Status.AppliedSystem)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // the passes the last writes brought
	host := fleet.Host("worker-01")
	var probes0 int
	host.Set(func(h *hosttest.Host) { probes0 = h.Probes })
	reqs.take()
	f.srv.ResetCounts()

	time.Sleep(8 * time.Second)
	var writes, reads []string
	for _, r := range reqs.take() {
		if strings.HasPrefix(r, "GET ") {
			reads = append(reads, r)
		} else {
			writes = append(writes, r)
		}
	}
	var probes int
	host.Set(func(h *hosttest.Host) { probes = h.Probes - probes0 })
	lists := f.srv.Count(gittest.LsRemote)
	if probes < 2 || lists < 2 {
		t.Fatalf("in 8 s: %d probes, %d ref listings: the operator was not working, the test tests nothing", probes, lists)
	}
	if len(writes) > 0 || len(reads) > 0 {
		t.Errorf("idle for 8 s (%d probes, %d configuration passes' listings), the operator sent %d writes %v and %d reads %v",
			probes, lists, len(writes), writes, len(reads), reads)
	}
	if lists > 9 {
		t.Errorf("%d ref listings in 8 s with a 1 s interval: want at most one per interval", lists)
	}
	if c := getConfig(t, f.ns, "worker-config"); len(c.Status.History) != 1 {
		t.Errorf("history %s: an idle configuration applied again", fmt.Sprint(c.Status.History))
	}
}
