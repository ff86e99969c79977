package webhook

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMethodOtherThanPostIsRefused(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodHead} {
		t.Run(method, func(t *testing.T) {
			h := newHarness(t, nil)
			rec := h.do(method, ProviderGitHub, nil, nil)
			expectStatus(t, rec, http.StatusMethodNotAllowed)
			if got := rec.Header().Get("Allow"); got != http.MethodPost {
				t.Errorf("Allow %q, want POST", got)
			}
			if got := h.counter(h.rc.metrics.rejected, ProviderGitHub, ReasonMethod); got != 1 {
				t.Errorf("rejected{method} %v, want 1", got)
			}
			expectNothingTriggered(t, h)
		})
	}
}

func TestUnknownPathIsNotFound(t *testing.T) {
	h := newHarness(t, nil)
	for _, path := range []string{"/hook/bitbucket", "/hook/", "/github", "/hook/github/extra"} {
		req, _ := http.NewRequest(http.MethodPost, "http://nio"+path, nil)
		rec := serveRequest(h, req)
		if rec.Code != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404", path, rec.Code)
		}
	}
	expectNothingTriggered(t, h)
}

func TestMalformedPayloadAfterValidSignatureIsBadRequest(t *testing.T) {
	cases := []struct {
		name, provider string
		header         http.Header
		body           string
	}{
		{"not JSON", ProviderGitHub, http.Header{"X-Github-Event": {"push"}}, `{"ref": "refs/heads/main",`},
		{"no repository", ProviderGitea, http.Header{"X-Gitea-Event": {"push"}}, `{"ref": "refs/heads/main", "after": "bffeb742"}`},
		{"repository URL not a URL", ProviderForgejo, http.Header{"X-Forgejo-Event": {"push"}}, `{"repository": {"clone_url": "not a url"}}`},
		{"GitLab without project", ProviderGitLab, http.Header{"X-Gitlab-Event": {"Push Hook"}}, `{"object_kind": "push", "ref": "refs/heads/main"}`},
		{"generic without repository", ProviderGeneric, nil, `{"ref": "refs/heads/main"}`},
		{"generic array", ProviderGeneric, nil, `[{"repository": "https://git.internal.example/fleet.git"}]`},
		{"missing event header", ProviderGitHub, nil, string(fixture(t, "github-push.json"))},
		{"form without payload", ProviderGitHub, http.Header{"X-Github-Event": {"push"}, "Content-Type": {"application/x-www-form-urlencoded"}}, "ref=main"},
		{"GitLab form", ProviderGitLab, http.Header{"X-Gitlab-Event": {"Push Hook"}, "Content-Type": {"application/x-www-form-urlencoded"}}, "payload=%7B%7D"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, nil)
			hdr := c.header.Clone()
			if hdr == nil {
				hdr = http.Header{}
			}
			signAs(hdr, c.provider, []byte(c.body))
			expectStatus(t, h.post(c.provider, hdr, []byte(c.body)), http.StatusBadRequest)
			expectNothingTriggered(t, h)
			if got := h.counter(h.rc.metrics.rejected, c.provider, ReasonPayload); got != 1 {
				t.Errorf("rejected{payload} %v, want 1", got)
			}
			if got := h.counter(h.rc.metrics.verified, c.provider); got != 1 {
				t.Errorf("verified %v, want 1", got)
			}
		})
	}
}

func TestUnreadableOrEmptySecretRefusesEverything(t *testing.T) {
	body := fixture(t, "generic-push.json")
	cases := map[string]SecretSource{
		"source fails": func(context.Context) ([]byte, error) { return nil, errors.New("secrets \"nio-webhook\" not found") },
		// An empty key must not make a signature with an empty key valid.
		"empty": func(context.Context) ([]byte, error) { return []byte("\n"), nil },
	}
	for name, src := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, func(o *Options) { o.Secret = src })
			hdr := http.Header{GenericSignatureHeader: {"sha256=" + hexHMAC("", body)}}
			expectStatus(t, h.post(ProviderGeneric, hdr, body), http.StatusServiceUnavailable)
			expectNothingTriggered(t, h)
			if got := h.counter(h.rc.metrics.rejected, ProviderGeneric, ReasonSecret); got != 1 {
				t.Errorf("rejected{secret} %v, want 1", got)
			}
		})
	}
}

// A missing Secret is one log line a minute, not one per delivery (a flood on the
// public endpoint must not become a flood of error lines).
func TestUnusableSecretIsLoggedOncePerMinute(t *testing.T) {
	var mu sync.Mutex
	var errorLines int
	logger := funcr.New(func(_, args string) {
		mu.Lock()
		defer mu.Unlock()
		if strings.Contains(args, `"msg"="read webhook secret"`) {
			errorLines++
		}
	}, funcr.Options{})
	var broken atomic.Bool
	broken.Store(true)
	h := newHarness(t, func(o *Options) {
		o.Logger = logger
		o.Secret = func(context.Context) ([]byte, error) {
			if broken.Load() {
				return nil, errors.New(`secrets "nio-webhook" not found`)
			}
			return []byte(testSecret), nil
		}
	})
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h.rc.now = clk.Now
	lines := func() int { mu.Lock(); defer mu.Unlock(); return errorLines }
	body := fixture(t, "generic-push.json")

	for range 100 {
		expectStatus(t, h.post(ProviderGeneric, nil, body), http.StatusServiceUnavailable)
	}
	if n := lines(); n != 1 {
		t.Fatalf("%d error lines for 100 deliveries, want 1", n)
	}
	clk.Advance(time.Minute)
	h.post(ProviderGeneric, nil, body)
	if n := lines(); n != 2 {
		t.Fatalf("%d error lines a minute later, want 2", n)
	}
	// Fixed, then broken again: told at once.
	broken.Store(false)
	expectStatus(t, h.post(ProviderGeneric, signedGeneric(body), body), http.StatusAccepted)
	broken.Store(true)
	h.post(ProviderGeneric, nil, body)
	if n := lines(); n != 3 {
		t.Fatalf("%d error lines after the secret broke again, want 3", n)
	}
	if got := h.counter(h.rc.metrics.rejected, ProviderGeneric, ReasonSecret); got != 102 {
		t.Errorf("rejected{secret} %v, want 102", got)
	}
}

// `kubectl create secret generic --from-file=token=...` keeps the file's newline;
// the forge was given the token without it.
func TestSecretTrailingNewlineIsIgnored(t *testing.T) {
	h := newHarness(t, func(o *Options) {
		o.Secret = func(context.Context) ([]byte, error) { return []byte(testSecret + "\n"), nil }
	})
	body := fixture(t, "gitlab-push.json")
	hdr := http.Header{"X-Gitlab-Event": {"Push Hook"}, "X-Gitlab-Token": {testSecret}}
	expectStatus(t, h.post(ProviderGitLab, hdr, body), http.StatusAccepted)
}

func TestTriggerFailureIsServerErrorSoTheForgeRedelivers(t *testing.T) {
	h := newHarness(t, nil)
	h.trigger.err = errors.New("list NixosConfigurations: connection refused")
	body := fixture(t, "generic-push.json")
	hdr := http.Header{GenericSignatureHeader: {"sha256=" + hexHMAC(testSecret, body)}}
	rec := h.post(ProviderGeneric, hdr, body)
	expectStatus(t, rec, http.StatusInternalServerError)
	if strings.Contains(rec.Body.String(), "connection refused") {
		t.Errorf("answer %s shows an internal error", rec.Body.String())
	}
	if got := h.counter(h.rc.metrics.triggerErrors, ProviderGeneric); got != 1 {
		t.Errorf("trigger errors %v, want 1", got)
	}
}

// The trigger runs to its end even when the forge hangs up mid-request.
func TestTriggerContextOutlivesTheRequest(t *testing.T) {
	var triggerErr error
	h := newHarness(t, func(o *Options) {
		o.Trigger = func(ctx context.Context, _ []string) (int, error) {
			triggerErr = ctx.Err()
			return 0, nil
		}
	})
	body := fixture(t, "generic-push.json")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://nio/hook/generic", bytes.NewReader(body))
	req.Header.Set(GenericSignatureHeader, "sha256="+hexHMAC(testSecret, body))
	expectStatus(t, serveRequest(h, req), http.StatusAccepted)
	if triggerErr != nil {
		t.Fatalf("trigger saw a done context: %v", triggerErr)
	}
}

// Neither the secret, nor a signature, nor a credential in a pushed URL reaches the
// log, while the log does say what happened.
func TestLogsHoldNoSecretSignatureOrCredential(t *testing.T) {
	var mu sync.Mutex
	var logs strings.Builder
	logger := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		logs.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{Verbosity: 10})
	h := newHarness(t, func(o *Options) { o.Logger = logger })

	body := []byte(`{"repository": "https://ci:glpat-LEAKME@git.internal.example/fleet.git", "ref": "refs/heads/main"}`)
	goodSig := "sha256=" + hexHMAC(testSecret, body)
	badSig := "sha256=" + hexHMAC("wrong", body)
	expectStatus(t, h.post(ProviderGeneric, http.Header{GenericSignatureHeader: {goodSig}}, body), http.StatusAccepted)
	expectStatus(t, h.post(ProviderGeneric, http.Header{GenericSignatureHeader: {badSig}}, body), http.StatusUnauthorized)
	gl := fixture(t, "gitlab-push.json")
	expectStatus(t, h.post(ProviderGitLab, http.Header{"X-Gitlab-Event": {"Push Hook"}, "X-Gitlab-Token": {"guessed-token"}}, gl), http.StatusUnauthorized)
	expectStatus(t, h.post(ProviderGitLab, http.Header{"X-Gitlab-Event": {"Push Hook"}, "X-Gitlab-Token": {testSecret}}, gl), http.StatusAccepted)

	mu.Lock()
	out := logs.String()
	mu.Unlock()
	for _, leak := range []string{testSecret, goodSig[7:], badSig[7:], "glpat-LEAKME", "guessed-token"} {
		if strings.Contains(out, leak) {
			t.Errorf("log holds %q:\n%s", leak, out)
		}
	}
	for _, want := range []string{`"push received"`, `"git.internal.example/fleet"`, `"delivery refused"`, `"triggered"=2`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}

func TestMetricsAreRegisteredWithTheGivenRegisterer(t *testing.T) {
	h := newHarness(t, nil)
	body := fixture(t, "generic-push.json")
	h.post(ProviderGeneric, http.Header{GenericSignatureHeader: {"sha256=" + hexHMAC(testSecret, body)}}, body)
	h.post(ProviderGeneric, http.Header{}, body)

	for name, want := range map[string]int{
		"nio_webhook_received_total":                 5,  // one series per provider, from the start
		"nio_webhook_rejected_total":                 35, // provider × reason
		"nio_webhook_triggered_configurations_total": 5,
	} {
		if n, err := testutil.GatherAndCount(h.reg, name); err != nil || n != want {
			t.Errorf("%s: %d series (err %v), want %d", name, n, err, want)
		}
	}
	m := h.rc.metrics
	if got := h.counter(m.received, ProviderGeneric); got != 2 {
		t.Errorf("received %v, want 2", got)
	}
	if got := h.counter(m.verified, ProviderGeneric); got != 1 {
		t.Errorf("verified %v, want 1", got)
	}
	if got := h.counter(m.rejected, ProviderGeneric, ReasonSignature); got != 1 {
		t.Errorf("rejected{signature} %v, want 1", got)
	}
	if got := h.counter(m.triggered, ProviderGeneric); got != 2 {
		t.Errorf("triggered %v, want 2", got)
	}

	// A second receiver on the same registry is a wiring mistake, reported as such.
	if _, err := NewReceiver(Options{Secret: func(context.Context) ([]byte, error) { return nil, nil },
		Trigger: h.trigger.trigger, Registerer: h.reg}); err == nil {
		t.Error("second registration on one registry succeeded")
	}
}

func TestNewReceiverNeedsSecretAndTrigger(t *testing.T) {
	src := func(context.Context) ([]byte, error) { return []byte("x"), nil }
	trig := func(context.Context, []string) (int, error) { return 0, nil }
	for name, o := range map[string]Options{"no secret": {Trigger: trig}, "no trigger": {Secret: src}} {
		if _, err := NewReceiver(o); err == nil {
			t.Errorf("%s: NewReceiver succeeded", name)
		}
	}
	if _, err := NewReceiver(Options{Secret: src, Trigger: trig, Registerer: prometheus.NewRegistry()}); err != nil {
		t.Errorf("NewReceiver: %v", err)
	}
}

// The example from GitHub's "Validating webhook deliveries" pins the algorithm and
// the header format to what GitHub sends.
func TestSignMatchesGitHubDocumentedExample(t *testing.T) {
	const want = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	if got := Sign([]byte("It's a Secret to Everybody"), []byte("Hello, World!")); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

// signAs adds a valid signature for provider to h.
func signAs(h http.Header, provider string, body []byte) {
	for _, pc := range providerCases {
		if pc.provider == provider {
			h.Set(pc.authHeader, pc.auth(testSecret, body))
		}
	}
}

func serveRequest(h *harness, req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.rc.ServeHTTP(rec, req)
	return rec
}
