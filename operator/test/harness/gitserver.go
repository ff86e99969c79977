package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/homystack/nio/testkit/nixtest"
)

// gitHTTPBackend is where Debian's git package installs git-http-backend.
const gitHTTPBackend = "/usr/lib/git-core/git-http-backend"

// RepoName is the served repository's name.
const RepoName = "nixos-configs.git"

// GitServer serves one bare repository with `git http-backend` (through net/http/cgi)
// and token auth, and commits to it from a work tree as a developer would push.
type GitServer struct {
	// RepoURL is the repository's URL (http://127.0.0.1:<port>/nixos-configs.git).
	RepoURL string
	// Token is the bearer token the server accepts (goes into the git-credentials Secret).
	Token string

	bare, work string
	env        *Env
}

// StartGitServer creates the repository and serves it on loopback until cleanup.
func StartGitServer(e *Env) (*GitServer, error) {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	g := &GitServer{Token: hex.EncodeToString(tok), bare: e.Path("git", RepoName), work: e.Path("git", "work"), env: e}
	if err := g.git("", "init", "--quiet", "--bare", "--initial-branch=main", g.bare); err != nil {
		return nil, err
	}
	if err := g.git("", "init", "--quiet", "--initial-branch=main", g.work); err != nil {
		return nil, err
	}
	if err := g.git(g.work, "remote", "add", "origin", g.bare); err != nil {
		return nil, err
	}
	backend := &cgi.Handler{
		Path: gitHTTPBackend,
		Env:  []string{"GIT_PROJECT_ROOT=" + filepath.Dir(g.bare), "GIT_HTTP_EXPORT_ALL=1"},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="nio-e2e"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	e.Cleanup.Add("git server", func() error { return srv.Close() })
	g.RepoURL = "http://" + l.Addr().String() + "/" + RepoName
	return g, nil
}

// authorized accepts the token the way forges accept an access token: as the
// password of HTTP basic auth (any user, as GitHub's x-access-token), or as a bearer
// token.
func (g *GitServer) authorized(r *http.Request) bool {
	if _, pass, ok := r.BasicAuth(); ok {
		return subtle.ConstantTimeCompare([]byte(pass), []byte(g.Token)) == 1
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(g.Token)) == 1
}

// CommitFixture replaces the work tree with nixtest fixture flake (basic, sleep, …)
// plus vars, commits it with msg and pushes it; it returns the new HEAD.
func (g *GitServer) CommitFixture(fixture string, vars map[string]string, msg string) (string, error) {
	return g.CommitFixtureFiles(fixture, vars, nil, msg)
}

// CommitFixtureFiles is CommitFixture with more files (slash-separated path →
// content), e.g. a configuration module beside the flake.
func (g *GitServer) CommitFixtureFiles(fixture string, vars, files map[string]string, msg string) (string, error) {
	entries, err := os.ReadDir(g.work)
	if err != nil {
		return "", err
	}
	for _, en := range entries {
		if en.Name() != ".git" {
			if err := os.RemoveAll(filepath.Join(g.work, en.Name())); err != nil {
				return "", err
			}
		}
	}
	if err := nixtest.WriteFlake(g.work, fixture, vars); err != nil {
		return "", err
	}
	for rel, content := range files {
		p := filepath.Join(g.work, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	ident := []string{"-c", "user.name=NIO demo", "-c", "user.email=demo@nio.invalid"}
	for _, argv := range [][]string{
		{"add", "--all"},
		append(ident, "commit", "--quiet", "--allow-empty", "-m", msg),
		{"push", "--quiet", "origin", "main"},
	} {
		if err := g.git(g.work, argv...); err != nil {
			return "", err
		}
	}
	head, err := g.Head()
	if err != nil {
		return "", err
	}
	g.env.Printf("\n$ git commit -m %q && git push   → %s\n", msg, head)
	return head, nil
}

// Head is the commit main points at on the server.
func (g *GitServer) Head() (string, error) {
	out, err := exec.Command("git", "--git-dir", g.bare, "rev-parse", "refs/heads/main").Output()
	if err != nil {
		return "", fmt.Errorf("git rev-parse main: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func (g *GitServer) git(dir string, args ...string) error {
	cmd := exec.CommandContext(context.Background(), "git", args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
