package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// Provider names, as they appear in the request path (/hook/<name>) and in the
// metrics' provider label.
const (
	ProviderGitHub  = "github"
	ProviderGitLab  = "gitlab"
	ProviderGitea   = "gitea"
	ProviderForgejo = "forgejo"
	ProviderGeneric = "generic"
)

var (
	errNoSignature  = errors.New("missing signature")
	errBadSignature = errors.New("signature mismatch")
)

// A provider is one forge's delivery format: how it authenticates a delivery, how
// it names the event, and where its payload keeps the repository's URLs.
type provider struct {
	name string
	// eventHeader names the event; empty for the generic provider, whose every
	// delivery is a push.
	eventHeader string
	// pushEvents are the eventHeader values that mean "refs moved".
	pushEvents []string
	// deliveryHeader carries the forge's delivery ID, logged so that a line can be
	// found from the forge's "recent deliveries" page; a second push with an ID seen
	// before is a replay (replay.go).
	deliveryHeader string
	// authHeader carries the signature or token that verify checks: a source over
	// its limit of refused deliveries is answered 429 at once when it sends none.
	authHeader string
	// uniqueBody: the signature covers the body and every push's body differs (it
	// carries the push time), so a body seen before is a replay whatever its
	// (unsigned) delivery header says.
	uniqueBody bool
	verify     func(h http.Header, body, secret []byte) error
	parse      func(payload []byte) (push, error)
	// form: the forge can post application/x-www-form-urlencoded with the JSON in a
	// `payload` field (the signature still covers the raw body).
	form bool
}

// push is what a verified push delivery says.
type push struct {
	ref, after string
	// urls are every spelling of the pushed repository the payload carries.
	urls []string
}

var providers = map[string]*provider{
	ProviderGitHub: {
		name: ProviderGitHub, eventHeader: "X-GitHub-Event", pushEvents: []string{"push"},
		deliveryHeader: "X-GitHub-Delivery",
		// Only the SHA-256 signature: the legacy X-Hub-Signature is HMAC-SHA1.
		authHeader: "X-Hub-Signature-256", uniqueBody: true,
		verify: hmacHeader("X-Hub-Signature-256", "sha256="),
		parse:  parseRepositoryPayload, form: true,
	},
	ProviderGitLab: {
		name: ProviderGitLab, eventHeader: "X-Gitlab-Event",
		// A configuration may follow a tag, so tag pushes count.
		pushEvents:     []string{"Push Hook", "Tag Push Hook"},
		deliveryHeader: "X-Gitlab-Event-UUID",
		// The token signs nothing, so the body is no proof of a replay.
		authHeader: "X-Gitlab-Token",
		verify:     tokenHeader("X-Gitlab-Token"),
		parse:      parseGitLab,
	},
	// Forgejo also sends the X-Gitea-* headers, so a Forgejo hook may use either path.
	ProviderGitea: {
		name: ProviderGitea, eventHeader: "X-Gitea-Event", pushEvents: []string{"push"},
		deliveryHeader: "X-Gitea-Delivery",
		authHeader:     "X-Gitea-Signature", uniqueBody: true,
		verify: hmacHeader("X-Gitea-Signature", ""),
		parse:  parseRepositoryPayload, form: true,
	},
	ProviderForgejo: {
		name: ProviderForgejo, eventHeader: "X-Forgejo-Event", pushEvents: []string{"push"},
		deliveryHeader: "X-Forgejo-Delivery",
		authHeader:     "X-Forgejo-Signature", uniqueBody: true,
		verify: hmacHeader("X-Forgejo-Signature", ""),
		parse:  parseRepositoryPayload, form: true,
	},
	ProviderGeneric: {
		// A CI job may post the same body for every push: only the delivery
		// header, when sent, tells a replay.
		name: ProviderGeneric, deliveryHeader: GenericDeliveryHeader,
		authHeader: GenericSignatureHeader,
		verify:     hmacHeader(GenericSignatureHeader, "sha256="),
		parse:      parseGeneric,
	},
}

// GenericSignatureHeader carries `sha256=<hex HMAC-SHA256 of the body>` on
// deliveries to /hook/generic, for CI jobs and git hooks that are not a forge.
const GenericSignatureHeader = "X-NIO-Signature-256"

// GenericDeliveryHeader optionally carries a unique ID of a delivery to
// /hook/generic; a second delivery with the same ID within the replay window is
// ignored. It is not signed: it stops a sender's own retries and naive replays.
const GenericDeliveryHeader = "X-NIO-Delivery"

// GenericPush is the body /hook/generic accepts. Only Repository is required; Ref
// and After are logged.
type GenericPush struct {
	// Repository is any URL of the pushed repository (credentials are ignored).
	Repository string `json:"repository"`
	// Ref is the pushed ref, e.g. refs/heads/main.
	Ref string `json:"ref,omitempty"`
	// After is the commit the ref now points to.
	After string `json:"after,omitempty"`
}

// Sign returns the `sha256=<hex>` value GitHub and the generic provider send for
// body: the HMAC-SHA256 of the exact bytes sent, keyed with the shared secret.
func Sign(secret, body []byte) string {
	return "sha256=" + hex.EncodeToString(mac(secret, body))
}

func mac(secret, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return m.Sum(nil)
}

// hmacHeader verifies a hex HMAC-SHA256 of the body in header name, after prefix.
func hmacHeader(name, prefix string) func(http.Header, []byte, []byte) error {
	return func(h http.Header, body, secret []byte) error {
		v := h.Get(name)
		if v == "" {
			return errNoSignature
		}
		digest, ok := strings.CutPrefix(v, prefix)
		if !ok {
			return errBadSignature
		}
		got, err := hex.DecodeString(digest)
		if err != nil {
			return errBadSignature
		}
		if !hmac.Equal(mac(secret, body), got) {
			return errBadSignature
		}
		return nil
	}
}

// tokenHeader verifies a shared token sent as is (GitLab signs nothing).
func tokenHeader(name string) func(http.Header, []byte, []byte) error {
	return func(h http.Header, _, secret []byte) error {
		v := h.Get(name)
		if v == "" {
			return errNoSignature
		}
		// Comparing digests keeps the time independent of where, and of whether the
		// lengths, differ.
		got, want := sha256.Sum256([]byte(v)), sha256.Sum256(secret)
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			return errBadSignature
		}
		return nil
	}
}

// payloadJSON returns the JSON document of a verified body.
func payloadJSON(p *provider, contentType string, body []byte) ([]byte, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/x-www-form-urlencoded" {
		// Forges send application/json; anything else is tried as JSON too.
		return body, nil
	}
	if !p.form {
		return nil, fmt.Errorf("%s does not send form-encoded bodies", p.name)
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, fmt.Errorf("form body: %w", err)
	}
	payload := form.Get("payload")
	if payload == "" {
		return nil, errors.New("form body without a payload field")
	}
	return []byte(payload), nil
}

// repositoryPayload is the part of a GitHub, Gitea or Forgejo push that NIO reads.
// Gitea and Forgejo copy GitHub's names but send no git_url.
type repositoryPayload struct {
	Ref        string `json:"ref"`
	After      string `json:"after"`
	Repository *struct {
		CloneURL string `json:"clone_url"`
		SSHURL   string `json:"ssh_url"`
		HTMLURL  string `json:"html_url"`
		GitURL   string `json:"git_url"`
	} `json:"repository"`
}

func parseRepositoryPayload(data []byte) (push, error) {
	var p repositoryPayload
	if err := json.Unmarshal(data, &p); err != nil {
		return push{}, fmt.Errorf("decode push payload: %w", err)
	}
	if p.Repository == nil {
		return push{}, errors.New("push payload without a repository")
	}
	r := p.Repository
	return newPush(p.Ref, p.After, r.CloneURL, r.SSHURL, r.HTMLURL, r.GitURL)
}

// gitLabPayload is the part of a GitLab push or tag push that NIO reads. The
// `repository` object is deprecated in favour of `project` but still sent; it is
// read too, for older servers.
type gitLabPayload struct {
	Ref     string `json:"ref"`
	After   string `json:"after"`
	Project *struct {
		GitHTTPURL string `json:"git_http_url"`
		GitSSHURL  string `json:"git_ssh_url"`
		WebURL     string `json:"web_url"`
	} `json:"project"`
	Repository *struct {
		GitHTTPURL string `json:"git_http_url"`
		GitSSHURL  string `json:"git_ssh_url"`
		Homepage   string `json:"homepage"`
	} `json:"repository"`
}

func parseGitLab(data []byte) (push, error) {
	var p gitLabPayload
	if err := json.Unmarshal(data, &p); err != nil {
		return push{}, fmt.Errorf("decode push payload: %w", err)
	}
	var urls []string
	if pr := p.Project; pr != nil {
		urls = append(urls, pr.GitHTTPURL, pr.GitSSHURL, pr.WebURL)
	}
	if r := p.Repository; r != nil {
		urls = append(urls, r.GitHTTPURL, r.GitSSHURL, r.Homepage)
	}
	return newPush(p.Ref, p.After, urls...)
}

func parseGeneric(data []byte) (push, error) {
	var p GenericPush
	if err := json.Unmarshal(data, &p); err != nil {
		return push{}, fmt.Errorf("decode push payload: %w", err)
	}
	return newPush(p.Ref, p.After, p.Repository)
}

// newPush keeps the URLs that name a repository, each spelling once.
func newPush(ref, after string, candidates ...string) (push, error) {
	p := push{ref: ref, after: after}
	seen := map[string]bool{}
	for _, u := range candidates {
		if u == "" || seen[u] {
			continue
		}
		seen[u] = true
		if _, err := NormalizeRepoURL(u); err == nil {
			p.urls = append(p.urls, u)
		}
	}
	if len(p.urls) == 0 {
		return push{}, errors.New("push payload names no repository URL")
	}
	return p, nil
}
