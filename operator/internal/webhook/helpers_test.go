package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const testSecret = "It's a Secret to Everybody"

// configuration stands for a NixosConfiguration: its name and spec.gitRepo.
type configuration struct{ name, gitRepo string }

// fleet mixes every spelling of the five pushed repositories with look-alikes that
// must never be triggered: a longer name, a subgroup, another owner, another host.
var fleet = []configuration{
	{"gh-https", "https://github.com/homystack/fleet"},
	{"gh-scp", "git@github.com:homystack/fleet.git"},
	{"gh-ssh", "ssh://git@GitHub.com/homystack/fleet.git/"},
	{"gh-longer-name", "https://github.com/homystack/fleet-secrets.git"},
	{"gh-other-owner", "https://github.com/someone/fleet.git"},
	{"gl-https", "https://gitlab.example.com/infra/fleet.git"},
	{"gl-token-in-url", "https://oauth2:glpat-Xq7TOKEN@gitlab.example.com/infra/fleet"},
	{"gl-subgroup", "https://gitlab.example.com/infra/fleet/staging.git"},
	{"gitea-scp", "git@gitea.example.org:ops/nixos.git"},
	{"gitea-port-443", "https://GITEA.example.org:443/ops/nixos"},
	{"fj-ssh-port", "ssh://git@forgejo.example.net:2222/ops/nixos.git"},
	{"fj-https", "https://forgejo.example.net/ops/nixos.git"},
	{"fj-other-port", "ssh://git@forgejo.example.net:2223/ops/nixos.git"},
	{"generic-scp", "git@git.internal.example:fleet.git"},
	{"generic-https", "https://git.internal.example/fleet"},
	{"generic-nested", "https://git.internal.example/fleet/nested.git"},
	{"local", "file:///srv/git/fleet.git"},
}

// fakeTrigger does what the operator's Trigger does, with the cluster replaced by a
// list: it triggers the configurations whose gitRepo is one of the pushed URLs.
type fakeTrigger struct {
	configs []configuration
	err     error

	mu        sync.Mutex
	calls     int
	triggered []string
}

func (f *fakeTrigger) trigger(_ context.Context, repoURLs []string) (int, error) {
	set := NewRepoSet(repoURLs)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	n := 0
	for _, c := range f.configs {
		if set.Contains(c.gitRepo) {
			f.triggered = append(f.triggered, c.name)
			n++
		}
	}
	return n, f.err
}

func (f *fakeTrigger) result() (calls int, names []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, slices.Sorted(slices.Values(f.triggered))
}

type harness struct {
	rc      *Receiver
	trigger *fakeTrigger
	reg     *prometheus.Registry
}

// newHarness builds a Receiver with the test secret, a fakeTrigger over fleet and a
// registry of its own; edit adjusts the options first.
func newHarness(t *testing.T, edit func(*Options)) *harness {
	t.Helper()
	h := &harness{trigger: &fakeTrigger{configs: fleet}, reg: prometheus.NewPedanticRegistry()}
	opts := Options{
		Secret:     func(context.Context) ([]byte, error) { return []byte(testSecret), nil },
		Trigger:    h.trigger.trigger,
		Registerer: h.reg,
		Logger:     logr.Discard(),
	}
	if edit != nil {
		edit(&opts)
	}
	rc, err := NewReceiver(opts)
	if err != nil {
		t.Fatalf("NewReceiver: %v", err)
	}
	h.rc = rc
	return h
}

// post sends body to /hook/<provider> with header through the handler.
func (h *harness) post(provider string, header http.Header, body []byte) *httptest.ResponseRecorder {
	return h.do(http.MethodPost, provider, header, bytes.NewReader(body))
}

func (h *harness) do(method, provider string, header http.Header, body io.Reader) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, PathPrefix+provider, body)
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v) // canonicalises, as a client on the wire does
		}
	}
	rec := httptest.NewRecorder()
	h.rc.ServeHTTP(rec, req)
	return rec
}

func (h *harness) counter(c *prometheus.CounterVec, labels ...string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(labels...))
}

// hexHMAC is written apart from the package's own signing so that the two check
// each other.
func hexHMAC(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func expectStatus(t *testing.T, rec *httptest.ResponseRecorder, want int) {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("status %d, want %d; body %s", rec.Code, want, rec.Body.String())
	}
}

func expectNothingTriggered(t *testing.T, h *harness) {
	t.Helper()
	if calls, names := h.trigger.result(); calls != 0 || len(names) != 0 {
		t.Fatalf("trigger called %d times, triggered %v; want nothing", calls, names)
	}
}
