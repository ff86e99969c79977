package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// gitBackend is where Debian's git package installs git-http-backend.
const gitBackend = "/usr/lib/git-core/git-http-backend"

// gitServer serves bare repositories with the real `git http-backend` through
// net/http/cgi on loopback, counting the requests the operator makes.
type gitServer struct {
	root string
	url  string
	srv  *http.Server

	lsRemotes, fetches, other atomic.Int64
}

func startGitServer(root string) (*gitServer, error) {
	if _, err := os.Stat(gitBackend); err != nil {
		return nil, fmt.Errorf("%s is missing (install Debian's git: make deps): %w", gitBackend, err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	g := &gitServer{root: root}
	backend := &cgi.Handler{
		Path: gitBackend,
		Dir:  root,
		Env: []string{
			"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1",
			"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=" + root,
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/info/refs") && r.URL.Query().Get("service") == "git-upload-pack":
			g.lsRemotes.Add(1)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/git-upload-pack"):
			g.fetches.Add(1)
		default:
			g.other.Add(1)
		}
		backend.ServeHTTP(w, r)
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g.url = "http://" + lis.Addr().String()
	g.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = g.srv.Serve(lis) }()
	return g, nil
}

func (g *gitServer) close() { _ = g.srv.Close() }

type gitCounts struct {
	LsRemotes int64 `json:"lsRemotes"`
	Fetches   int64 `json:"fetches"`
}

func (g *gitServer) counts() gitCounts {
	return gitCounts{LsRemotes: g.lsRemotes.Load(), Fetches: g.fetches.Load()}
}

func (c gitCounts) minus(o gitCounts) gitCounts {
	return gitCounts{LsRemotes: c.LsRemotes - o.LsRemotes, Fetches: c.Fetches - o.Fetches}
}

// gitRepo is a bare repository on the server plus the work tree the benchmark
// commits from (pushed to the bare repository on disk, so the server's counters see
// only the operator's requests).
type gitRepo struct {
	bare, work, url string
}

func (g *gitServer) newRepo(name string) (*gitRepo, error) {
	r := &gitRepo{bare: filepath.Join(g.root, name+".git"), work: filepath.Join(g.root, name+".work"), url: g.url + "/" + name + ".git"}
	if err := git("", "init", "--quiet", "--bare", "--initial-branch=main", r.bare); err != nil {
		return nil, err
	}
	if err := git("", "init", "--quiet", "--initial-branch=main", r.work); err != nil {
		return nil, err
	}
	return r, nil
}

// commit replaces the work tree's files with files, commits and pushes; it returns
// the commit hash.
func (r *gitRepo) commit(files map[string]string, msg string) (string, error) {
	entries, err := os.ReadDir(r.work)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.Name() != ".git" {
			if err := os.RemoveAll(filepath.Join(r.work, e.Name())); err != nil {
				return "", err
			}
		}
	}
	if err := writeTree(r.work, files); err != nil {
		return "", err
	}
	if err := git(r.work, "add", "--all"); err != nil {
		return "", err
	}
	if err := git(r.work, "-c", "user.name=nio-bench", "-c", "user.email=bench@nio.invalid", "commit", "--quiet", "--allow-empty", "-m", msg); err != nil {
		return "", err
	}
	if err := git(r.work, "push", "--quiet", r.bare, "HEAD:refs/heads/main"); err != nil {
		return "", err
	}
	out, err := exec.Command("git", "-C", r.work, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", fmt.Errorf("git rev-parse: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func writeTree(dir string, files map[string]string) error {
	for p, content := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(p, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			return err
		}
	}
	return nil
}

func git(dir string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
