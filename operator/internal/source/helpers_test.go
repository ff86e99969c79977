package source

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/testkit/gittest"
)

// gitServer is one way of reaching a repository in table tests.
type gitServer struct {
	name    string
	newRepo func(t *testing.T, name string) *gittest.Repo
	secret  map[string][]byte
	srv     *gittest.Server // nil for file://
}

func basicServer(t *testing.T) gitServer {
	srv := gittest.NewServer(t, gittest.Options{Auth: gittest.AuthBasic, Username: "fleet", Password: "hunter2-basic"})
	return gitServer{name: "basic", srv: srv, newRepo: srvRepo(srv),
		secret: map[string][]byte{"username": []byte("fleet"), "password": []byte("hunter2-basic")}}
}

func bearerServer(t *testing.T) gitServer {
	srv := gittest.NewServer(t, gittest.Options{Auth: gittest.AuthBearer, Token: "tok-right-0123456789"})
	return gitServer{name: "bearer", srv: srv, newRepo: srvRepo(srv),
		secret: map[string][]byte{"bearerToken": []byte("tok-right-0123456789")}}
}

func fileServer(*testing.T) gitServer {
	return gitServer{name: "file", newRepo: func(t *testing.T, name string) *gittest.Repo {
		return gittest.NewLocalRepo(t, name)
	}}
}

func srvRepo(srv *gittest.Server) func(t *testing.T, name string) *gittest.Repo {
	return func(t *testing.T, name string) *gittest.Repo { return srv.NewRepo(t, name) }
}

func newCache(t *testing.T, opts Options) *Cache {
	t.Helper()
	c, err := NewCache(opts)
	if err != nil {
		t.Fatalf("NewCache: %v", err)
	}
	return c
}

func openRepo(t *testing.T, c *Cache, url string, secret map[string][]byte) *Repo {
	t.Helper()
	creds, err := ParseCredentials(secret)
	if err != nil {
		t.Fatalf("ParseCredentials: %v", err)
	}
	r, err := c.Repo(url, creds)
	if err != nil {
		t.Fatalf("Repo(%s): %v", url, err)
	}
	return r
}

func resolve(t *testing.T, r *Repo, ref string) string {
	t.Helper()
	hash, err := r.Resolve(ctx(t), ref)
	if err != nil {
		t.Fatalf("Resolve(%q): %v", ref, err)
	}
	return hash
}

func tree(t *testing.T, r *Repo, commit string) map[string]Entry {
	t.Helper()
	entries, err := r.Tree(ctx(t), commit)
	if err != nil {
		t.Fatalf("Tree(%s): %v", commit, err)
	}
	out := map[string]Entry{}
	for _, e := range entries {
		out[e.Path] = e
	}
	return out
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// wantErr fails unless err is of class want and its text holds none of forbidden.
func wantErr(t *testing.T, err, want error, forbidden ...string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want %v", err, want)
	}
	for _, f := range forbidden {
		if f != "" && strings.Contains(err.Error(), f) {
			t.Fatalf("error text leaks a secret: %q", err.Error())
		}
	}
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
