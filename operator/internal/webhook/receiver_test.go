package webhook

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// providerCase is how one forge delivers a push, and what it must trigger.
type providerCase struct {
	provider string
	fixture  string
	// eventHeader is empty for the generic provider, which has no event header.
	eventHeader, pushEvent, otherEvent string
	authHeader                         string
	// auth is the authHeader value the forge sends for body under secret.
	auth func(secret string, body []byte) string
	want []string
}

var providerCases = []providerCase{
	{
		provider: ProviderGitHub, fixture: "github-push.json",
		eventHeader: "X-GitHub-Event", pushEvent: "push", otherEvent: "issues",
		authHeader: "X-Hub-Signature-256",
		auth:       func(s string, b []byte) string { return "sha256=" + hexHMAC(s, b) },
		want:       []string{"gh-https", "gh-scp", "gh-ssh"},
	},
	{
		provider: ProviderGitLab, fixture: "gitlab-push.json",
		eventHeader: "X-Gitlab-Event", pushEvent: "Push Hook", otherEvent: "Merge Request Hook",
		authHeader: "X-Gitlab-Token",
		auth:       func(s string, _ []byte) string { return s },
		want:       []string{"gl-https", "gl-token-in-url"},
	},
	{
		provider: ProviderGitea, fixture: "gitea-push.json",
		eventHeader: "X-Gitea-Event", pushEvent: "push", otherEvent: "issues",
		authHeader: "X-Gitea-Signature",
		auth:       hexHMAC,
		want:       []string{"gitea-port-443", "gitea-scp"},
	},
	{
		provider: ProviderForgejo, fixture: "forgejo-push.json",
		eventHeader: "X-Forgejo-Event", pushEvent: "push", otherEvent: "pull_request",
		authHeader: "X-Forgejo-Signature",
		auth:       hexHMAC,
		want:       []string{"fj-https", "fj-ssh-port"},
	},
	{
		provider: ProviderGeneric, fixture: "generic-push.json",
		authHeader: GenericSignatureHeader,
		auth:       func(s string, b []byte) string { return "sha256=" + hexHMAC(s, b) },
		want:       []string{"generic-https", "generic-scp"},
	},
}

// headers are what the forge sends with body, signed with secret; event empty
// means the case's push event.
func (pc providerCase) headers(secret, event string, body []byte) http.Header {
	h := http.Header{"Content-Type": {"application/json"}}
	if pc.eventHeader != "" {
		if event == "" {
			event = pc.pushEvent
		}
		h.Set(pc.eventHeader, event)
	}
	if secret != "" {
		h.Set(pc.authHeader, pc.auth(secret, body))
	}
	return h
}

func TestVerifiedPushTriggersExactlyTheConfigurationsOfThatRepository(t *testing.T) {
	for _, pc := range providerCases {
		t.Run(pc.provider, func(t *testing.T) {
			h := newHarness(t, nil)
			body := fixture(t, pc.fixture)
			rec := h.post(pc.provider, pc.headers(testSecret, "", body), body)
			expectStatus(t, rec, http.StatusAccepted)

			calls, names := h.trigger.result()
			if calls != 1 || !slices.Equal(names, pc.want) {
				t.Fatalf("trigger called %d times, triggered %v; want once, %v", calls, names, pc.want)
			}
			var resp struct {
				Result         string `json:"result"`
				Configurations int    `json:"configurations"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				t.Fatalf("answer %q: %v", rec.Body.String(), err)
			}
			if resp.Result != "triggered" || resp.Configurations != len(pc.want) {
				t.Errorf("answer %+v, want triggered %d", resp, len(pc.want))
			}
			m := h.rc.metrics
			if got := h.counter(m.received, pc.provider); got != 1 {
				t.Errorf("received %v, want 1", got)
			}
			if got := h.counter(m.verified, pc.provider); got != 1 {
				t.Errorf("verified %v, want 1", got)
			}
			if got := h.counter(m.triggered, pc.provider); got != float64(len(pc.want)) {
				t.Errorf("triggered configurations %v, want %d", got, len(pc.want))
			}
		})
	}
}

func TestWrongSignatureIsRefusedAndTriggersNothing(t *testing.T) {
	for _, pc := range providerCases {
		t.Run(pc.provider, func(t *testing.T) {
			h := newHarness(t, nil)
			body := fixture(t, pc.fixture)
			rec := h.post(pc.provider, pc.headers("not the secret", "", body), body)
			expectStatus(t, rec, http.StatusUnauthorized)
			expectNothingTriggered(t, h)
			if got := h.counter(h.rc.metrics.rejected, pc.provider, ReasonSignature); got != 1 {
				t.Errorf("rejected{signature} %v, want 1", got)
			}
			if got := h.counter(h.rc.metrics.verified, pc.provider); got != 0 {
				t.Errorf("verified %v, want 0", got)
			}
		})
	}
}

func TestMissingSignatureIsRefusedAndTriggersNothing(t *testing.T) {
	for _, pc := range providerCases {
		t.Run(pc.provider, func(t *testing.T) {
			h := newHarness(t, nil)
			body := fixture(t, pc.fixture)
			rec := h.post(pc.provider, pc.headers("", "", body), body)
			expectStatus(t, rec, http.StatusUnauthorized)
			expectNothingTriggered(t, h)
			if got := h.counter(h.rc.metrics.rejected, pc.provider, ReasonSignature); got != 1 {
				t.Errorf("rejected{signature} %v, want 1", got)
			}
		})
	}
}

// A signature is bound to the bytes: one signed for another repository's push does
// not carry over to this one.
func TestSignatureOfAnotherBodyIsRefused(t *testing.T) {
	for _, pc := range providerCases {
		if pc.provider == ProviderGitLab {
			continue // GitLab's token signs nothing; TLS is its only integrity.
		}
		t.Run(pc.provider, func(t *testing.T) {
			h := newHarness(t, nil)
			signed := fixture(t, pc.fixture)
			sent := bytes.ReplaceAll(signed, []byte("fleet"), []byte("fleet-secrets"))
			sent = bytes.ReplaceAll(sent, []byte("nixos"), []byte("nixos-secrets"))
			rec := h.post(pc.provider, pc.headers(testSecret, "", signed), sent)
			expectStatus(t, rec, http.StatusUnauthorized)
			expectNothingTriggered(t, h)
		})
	}
}

func TestOversizeBodyIsRefusedAndTriggersNothing(t *testing.T) {
	for _, pc := range providerCases {
		t.Run(pc.provider, func(t *testing.T) {
			// A valid, correctly signed push, padded past the cap: the size alone refuses it.
			body := fixture(t, pc.fixture)
			body = append(body, bytes.Repeat([]byte(" "), int(DefaultMaxBodyBytes))...)
			hdr := pc.headers(testSecret, "", body)

			t.Run("declared length", func(t *testing.T) {
				h := newHarness(t, nil)
				expectStatus(t, h.post(pc.provider, hdr, body), http.StatusRequestEntityTooLarge)
				expectNothingTriggered(t, h)
				if got := h.counter(h.rc.metrics.rejected, pc.provider, ReasonSize); got != 1 {
					t.Errorf("rejected{size} %v, want 1", got)
				}
			})
			t.Run("chunked", func(t *testing.T) {
				h := newHarness(t, nil)
				req := httptest.NewRequest(http.MethodPost, PathPrefix+pc.provider, io.MultiReader(bytes.NewReader(body)))
				req.ContentLength = -1
				req.Header = hdr
				rec := httptest.NewRecorder()
				h.rc.ServeHTTP(rec, req)
				expectStatus(t, rec, http.StatusRequestEntityTooLarge)
				expectNothingTriggered(t, h)
			})
		})
	}
}

func TestBodyAtTheCapIsAccepted(t *testing.T) {
	pc := providerCases[0]
	body := fixture(t, pc.fixture)
	limit := int64(len(body))
	h := newHarness(t, func(o *Options) { o.MaxBodyBytes = limit })
	expectStatus(t, h.post(pc.provider, pc.headers(testSecret, "", body), body), http.StatusAccepted)
	over := append(body, ' ')
	expectStatus(t, h.post(pc.provider, pc.headers(testSecret, "", over), over), http.StatusRequestEntityTooLarge)
}

func TestNonPushEventIsAnsweredAndTriggersNothing(t *testing.T) {
	for _, pc := range providerCases {
		if pc.eventHeader == "" {
			continue // every generic delivery is a push
		}
		t.Run(pc.provider, func(t *testing.T) {
			h := newHarness(t, nil)
			body := fixture(t, pc.fixture)
			rec := h.post(pc.provider, pc.headers(testSecret, pc.otherEvent, body), body)
			expectStatus(t, rec, http.StatusOK)
			expectNothingTriggered(t, h)
			if !strings.Contains(rec.Body.String(), `"ignored"`) {
				t.Errorf("answer %s does not say ignored", rec.Body.String())
			}
			if got := h.counter(h.rc.metrics.verified, pc.provider); got != 1 {
				t.Errorf("verified %v, want 1", got)
			}
		})
	}
}

func TestGitHubPingIsAnsweredOKAndTriggersNothing(t *testing.T) {
	h := newHarness(t, nil)
	body := fixture(t, "github-ping.json")
	pc := providerCases[0]
	expectStatus(t, h.post(ProviderGitHub, pc.headers(testSecret, "ping", body), body), http.StatusOK)
	expectNothingTriggered(t, h)

	// A ping is verified too, so a wrong secret shows in GitHub's delivery log at once.
	expectStatus(t, h.post(ProviderGitHub, pc.headers("wrong", "ping", body), body), http.StatusUnauthorized)
}

func TestGitLabTagPushTriggers(t *testing.T) {
	h := newHarness(t, nil)
	body := fixture(t, "gitlab-tag-push.json")
	hdr := http.Header{"X-Gitlab-Event": {"Tag Push Hook"}, "X-Gitlab-Token": {testSecret}}
	expectStatus(t, h.post(ProviderGitLab, hdr, body), http.StatusAccepted)
	if _, names := h.trigger.result(); !slices.Equal(names, []string{"gl-https", "gl-token-in-url"}) {
		t.Fatalf("triggered %v", names)
	}
}

// GitHub, Gitea and Forgejo can post `payload=<json>` form-encoded; the signature
// covers the encoded body.
func TestFormEncodedPushTriggers(t *testing.T) {
	for _, pc := range providerCases {
		if pc.provider == ProviderGitLab || pc.provider == ProviderGeneric {
			continue
		}
		t.Run(pc.provider, func(t *testing.T) {
			h := newHarness(t, nil)
			body := []byte(url.Values{"payload": {string(fixture(t, pc.fixture))}}.Encode())
			hdr := pc.headers(testSecret, "", body)
			hdr.Set("Content-Type", "application/x-www-form-urlencoded")
			expectStatus(t, h.post(pc.provider, hdr, body), http.StatusAccepted)
			if _, names := h.trigger.result(); !slices.Equal(names, pc.want) {
				t.Fatalf("triggered %v, want %v", names, pc.want)
			}
		})
	}
}

// Forgejo sends its X-Gitea-* headers too, so a Forgejo hook pointed at /hook/gitea
// works as well.
func TestForgejoDeliveryOnGiteaPath(t *testing.T) {
	h := newHarness(t, nil)
	body := fixture(t, "forgejo-push.json")
	sig := hexHMAC(testSecret, body)
	hdr := http.Header{
		"X-Forgejo-Event": {"push"}, "X-Forgejo-Signature": {sig},
		"X-Gitea-Event": {"push"}, "X-Gitea-Signature": {sig},
		"X-Github-Event": {"push"},
	}
	expectStatus(t, h.post(ProviderGitea, hdr, body), http.StatusAccepted)
	if _, names := h.trigger.result(); !slices.Equal(names, []string{"fj-https", "fj-ssh-port"}) {
		t.Fatalf("triggered %v", names)
	}
}

// The whole path over a real loopback connection, as a forge reaches it.
func TestPushOverHTTP(t *testing.T) {
	h := newHarness(t, nil)
	srv := httptest.NewServer(h.rc)
	defer srv.Close()
	pc := providerCases[0]
	body := fixture(t, pc.fixture)
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/hook/github", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = pc.headers(testSecret, "", body)
	req.Header.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if _, names := h.trigger.result(); !slices.Equal(names, pc.want) {
		t.Fatalf("triggered %v, want %v", names, pc.want)
	}
}

// countingReader counts the bytes the handler pulled from the body.
type countingReader struct{ n int }

func (c *countingReader) Read(p []byte) (int, error) {
	c.n += len(p)
	return len(p), nil
}

// A declared length over the cap is refused before a byte is read, so a large
// upload costs the operator nothing.
func TestDeclaredOversizeBodyIsRefusedUnread(t *testing.T) {
	h := newHarness(t, nil)
	body := &countingReader{}
	req := httptest.NewRequest(http.MethodPost, PathPrefix+ProviderGitHub, body)
	req.ContentLength = DefaultMaxBodyBytes + 1
	rec := httptest.NewRecorder()
	h.rc.ServeHTTP(rec, req)
	expectStatus(t, rec, http.StatusRequestEntityTooLarge)
	if body.n != 0 {
		t.Fatalf("read %d bytes of a body declared too large", body.n)
	}
}
