// Package gittest runs a real Git server for tests: bare repositories on disk served
// by `git http-backend` (the CGI program git itself ships) through Go's net/http/cgi,
// over plain HTTP or TLS, with no auth, HTTP basic auth or a bearer token. It counts
// the requests it receives by kind, so tests can assert how many network calls a
// client made. Repositories are built with the git binary (tests may use it; the
// operator's runtime code must not) and can also be reached as file:// URLs.
package gittest

import (
	"crypto/subtle"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// HTTPBackend is where Debian's git package installs git-http-backend.
const HTTPBackend = "/usr/lib/git-core/git-http-backend"

// AuthMode selects how the server checks credentials.
type AuthMode int

const (
	// AuthNone serves every request.
	AuthNone AuthMode = iota
	// AuthBasic requires `Authorization: Basic` with Options.Username and Options.Password.
	AuthBasic
	// AuthBearer requires `Authorization: Bearer <Options.Token>`.
	AuthBearer
	// AuthToken takes Options.Token the way forges take an access token: as the
	// basic-auth password (any user) or as a bearer token.
	AuthToken
)

// Kind names a class of request the server counts.
type Kind string

const (
	// LsRemote is a ref advertisement for fetching: GET <repo>/info/refs?service=git-upload-pack.
	// Every go-git List, Fetch and Clone starts with one.
	LsRemote Kind = "ls-remote"
	// Fetch is a pack negotiation: POST <repo>/git-upload-pack.
	Fetch Kind = "fetch"
	// Push is any request for git-receive-pack (advertisement or POST).
	Push Kind = "push"
	// Other is any other request (dumb-protocol file reads and the like).
	Other Kind = "other"
	// Unauthorized counts requests refused with 401. Such a request is also counted
	// under its own kind, so Count(LsRemote) is every ref advertisement asked for.
	Unauthorized Kind = "unauthorized"
)

// Options configure a Server. The zero value is a plain-HTTP server without auth.
type Options struct {
	// Auth selects the credential check; AuthBasic uses Username and Password,
	// AuthBearer uses Token.
	Auth     AuthMode
	Username string
	Password string
	Token    string
	// TLS serves HTTPS with a throwaway certificate for 127.0.0.1; its CA is
	// Server.CAPEM.
	TLS bool
	// AllowSHA1InWant sets uploadpack.allowAnySHA1InWant in every repository, so
	// clients may fetch a commit by hash (protocol v0 refuses that by default).
	AllowSHA1InWant bool
	// BeforeRequest, when set, runs in the handler after the request is counted and
	// before it is served (also for refused ones). Tests use it to hold a request
	// until they have arranged something, e.g. concurrent callers.
	BeforeRequest func(kind Kind, r *http.Request)
}

// Server is a running git http-backend. It stops when the test ends.
type Server struct {
	// URL is the base URL; a repository named "x" is at URL + "/x.git".
	URL string
	// CAPEM is the PEM certificate clients must trust when Options.TLS is set; nil otherwise.
	CAPEM []byte

	opts   Options
	root   string
	srv    *httptest.Server
	mu     sync.Mutex
	counts map[Kind]int
}

// NewServer starts a server whose repositories live in a fresh temporary directory;
// it stops when the test ends.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Serve(t.TempDir(), opts, testLog{t})
	if err != nil {
		t.Fatalf("gittest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Serve starts a server over the repositories in root (created if missing) outside a
// test — the demo and the benchmark serve their repositories with it. The backend's
// stderr goes to logw (nil: discarded). Close stops it.
func Serve(root string, opts Options, logw io.Writer) (*Server, error) {
	if _, err := os.Stat(HTTPBackend); err != nil {
		return nil, fmt.Errorf("%s is missing (install Debian's git package): %w", HTTPBackend, err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	if logw == nil {
		logw = io.Discard
	}
	s := &Server{opts: opts, root: root, counts: map[Kind]int{}}
	backend := &cgi.Handler{
		Path: HTTPBackend,
		Dir:  s.root,
		Env: []string{
			"GIT_PROJECT_ROOT=" + s.root,
			"GIT_HTTP_EXPORT_ALL=1",
			"GIT_CONFIG_NOSYSTEM=1",
			"GIT_CONFIG_GLOBAL=/dev/null",
			"HOME=" + s.root,
		},
		// The backend reads the protocol version from HTTP_GIT_PROTOCOL, which cgi
		// passes as it passes every request header.
		Stderr: logw,
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := classify(r)
		ok := s.authorized(r)
		s.mu.Lock()
		s.counts[kind]++
		if !ok {
			s.counts[Unauthorized]++
		}
		s.mu.Unlock()
		if opts.BeforeRequest != nil {
			opts.BeforeRequest(kind, r)
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="gittest"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})
	if opts.TLS {
		s.srv = httptest.NewTLSServer(h)
		s.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
	} else {
		s.srv = httptest.NewServer(h)
	}
	s.URL = s.srv.URL
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// Count returns how many requests of kind the server has received.
func (s *Server) Count(kind Kind) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[kind]
}

// ResetCounts sets every counter back to zero.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts = map[Kind]int{}
}

// RepoURL is the URL a repository called name has (or would have) on this server;
// useful for asserting how a missing repository is reported.
func (s *Server) RepoURL(name string) string {
	return s.URL + "/" + url.PathEscape(name) + ".git"
}

// NewRepo creates an empty bare repository called name (letters, digits, '-', '_',
// '.') served at RepoURL(name). Its default branch is "main".
func (s *Server) NewRepo(t testing.TB, name string) *Repo {
	t.Helper()
	r := newRepo(t, filepath.Join(s.root, checkName(t, name)+".git"))
	r.url = s.RepoURL(name)
	if s.opts.AllowSHA1InWant {
		r.git(t, nil, "config", "uploadpack.allowAnySHA1InWant", "true")
	}
	return r
}

func (s *Server) authorized(r *http.Request) bool {
	switch s.opts.Auth {
	case AuthBasic:
		u, p, ok := r.BasicAuth()
		return ok && equal(u, s.opts.Username) && equal(p, s.opts.Password)
	case AuthBearer:
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		return ok && equal(tok, s.opts.Token)
	case AuthToken:
		if _, p, ok := r.BasicAuth(); ok {
			return equal(p, s.opts.Token)
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		return ok && equal(tok, s.opts.Token)
	default:
		return true
	}
}

// testLog sends the backend's stderr (e.g. "Not a git repository") to the test log.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Logf("git-http-backend: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func classify(r *http.Request) Kind {
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/info/refs"):
		switch r.URL.Query().Get("service") {
		case "git-upload-pack":
			return LsRemote
		case "git-receive-pack":
			return Push
		}
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/git-upload-pack"):
		return Fetch
	case strings.HasSuffix(r.URL.Path, "/git-receive-pack"):
		return Push
	}
	return Other
}

func checkName(t testing.TB, name string) string {
	t.Helper()
	if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" || strings.HasPrefix(name, ".") {
		t.Fatalf("gittest: bad repository name %q", name)
	}
	return name
}
