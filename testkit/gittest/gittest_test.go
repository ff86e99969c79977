package gittest

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// client runs the git binary as a client, never prompting for credentials.
func client(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return clientEnv(t, nil, args...)
}

func clientEnv(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_ASKPASS=/bin/false")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestBasicAuthServesRightCredentialsAndRefusesWrongOnes(t *testing.T) {
	srv := NewServer(t, Options{Auth: AuthBasic, Username: "alice", Password: "s3cret"})
	repo := srv.NewRepo(t, "fleet")
	hash := repo.CommitFiles(t, map[string]string{"flake.nix": "{}"}, "first")

	good := strings.Replace(repo.URL(), "http://", "http://alice:s3cret@", 1)
	out, err := client(t, "ls-remote", good, "refs/heads/main")
	if err != nil || !strings.HasPrefix(out, hash) {
		t.Fatalf("ls-remote with right credentials: %v: %q (want %s)", err, out, hash)
	}
	if srv.Count(LsRemote) == 0 {
		t.Fatalf("ls-remote not counted")
	}

	bad := strings.Replace(repo.URL(), "http://", "http://alice:wrong@", 1)
	if out, err := client(t, "ls-remote", bad); err == nil {
		t.Fatalf("ls-remote with a wrong password succeeded: %q", out)
	}
	if srv.Count(Unauthorized) == 0 {
		t.Fatalf("refused request not counted")
	}
}

func TestBearerAuthOverTLSClonesTreeWithModesAndSymlinks(t *testing.T) {
	srv := NewServer(t, Options{Auth: AuthBearer, Token: "tok-123", TLS: true})
	if len(srv.CAPEM) == 0 || !strings.HasPrefix(srv.URL, "https://") {
		t.Fatalf("TLS server without CA or https URL: %q", srv.URL)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, srv.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	mustWrite(t, filepath.Join(src, "bin", "run"), "#!/bin/sh\n", 0o755)
	mustWrite(t, filepath.Join(src, "hosts", "a.nix"), "{ }\n", 0o644)
	if err := os.Symlink("hosts/a.nix", filepath.Join(src, "link.nix")); err != nil {
		t.Fatal(err)
	}
	repo := srv.NewRepo(t, "tls")
	hash := repo.CommitDir(t, src, "tree")
	tagObj := repo.AnnotatedTag(t, "v1", hash, "release")
	if tagObj == hash {
		t.Fatalf("annotated tag object has the commit's hash")
	}

	dst := filepath.Join(t.TempDir(), "clone")
	// The environment's GIT_SSL_CAINFO would override http.sslCAInfo.
	caEnv := []string{"GIT_SSL_CAINFO=" + ca}
	out, err := clientEnv(t, caEnv, "-c", "http.extraHeader=Authorization: Bearer tok-123", "clone", "--quiet", repo.URL(), dst)
	if err != nil {
		t.Fatalf("clone: %v: %s", err, out)
	}
	if srv.Count(Fetch) == 0 {
		t.Fatalf("fetch not counted")
	}
	if fi, err := os.Stat(filepath.Join(dst, "bin", "run")); err != nil || fi.Mode().Perm()&0o100 == 0 {
		t.Fatalf("executable bit lost: %v %v", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(dst, "link.nix")); err != nil || target != "hosts/a.nix" {
		t.Fatalf("symlink lost: %q %v", target, err)
	}
	if out, err := client(t, "ls-remote", repo.FileURL()); err != nil || !strings.Contains(out, hash+"\trefs/tags/v1^{}") {
		t.Fatalf("peeled tag: %v %q", err, out)
	}

	if out, err := clientEnv(t, caEnv, "-c", "http.extraHeader=Authorization: Bearer nope", "ls-remote", repo.URL()); err == nil {
		t.Fatalf("wrong token accepted: %s", out)
	}
}

func TestCommitFilesReplacesTreeAndAdvancesBranch(t *testing.T) {
	repo := NewLocalRepo(t, "local")
	first := repo.CommitFiles(t, map[string]string{"a": "1", "dir/b": "2"}, "one")
	second := repo.CommitFiles(t, map[string]string{"a": "1"}, "two")
	if first == second || repo.Head(t, DefaultBranch) != second {
		t.Fatalf("branch did not advance: %s %s head %s", first, second, repo.Head(t, DefaultBranch))
	}
	if !strings.HasPrefix(repo.URL(), "file://") {
		t.Fatalf("local repo URL %q", repo.URL())
	}
	dst := filepath.Join(t.TempDir(), "clone")
	if out, err := client(t, "clone", "--quiet", repo.URL(), dst); err != nil {
		t.Fatalf("clone: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dst, "dir", "b")); !os.IsNotExist(err) {
		t.Fatalf("file of the previous commit still present: %v", err)
	}
	// Same content, same parent chain shape, yet distinct commits.
	third := repo.CommitFiles(t, map[string]string{"a": "1"}, "two")
	if third == second {
		t.Fatalf("two commits share a hash")
	}
	repo.SetBranch(t, "old", first)
	if repo.Head(t, "old") != first {
		t.Fatalf("SetBranch did not point old at %s", first)
	}
}

func TestBeforeRequestSeesKindAndMissingRepoIs404(t *testing.T) {
	var kinds []Kind
	srv := NewServer(t, Options{BeforeRequest: func(k Kind, _ *http.Request) { kinds = append(kinds, k) }})
	resp, err := http.Get(srv.RepoURL("missing") + "/info/refs?service=git-upload-pack")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing repo answered %d", resp.StatusCode)
	}
	if len(kinds) != 1 || kinds[0] != LsRemote || srv.Count(LsRemote) != 1 {
		t.Fatalf("kinds %v count %d", kinds, srv.Count(LsRemote))
	}
	srv.ResetCounts()
	if srv.Count(LsRemote) != 0 {
		t.Fatalf("ResetCounts kept counts")
	}
}

func mustWrite(t *testing.T, path, content string, mode os.FileMode) {
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

// TestServeWorkRepoWithTokenAuth: outside a test's helpers, Serve and WorkRepo push
// commits that clients see, and AuthToken takes the token as a basic-auth password
// or a bearer token, nothing else.
func TestServeWorkRepoWithTokenAuth(t *testing.T) {
	s, err := Serve(t.TempDir(), Options{Auth: AuthToken, Token: "tok-1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	repo, err := s.CreateWorkRepo("fleet")
	if err != nil {
		t.Fatal(err)
	}
	head, err := repo.Commit(func(dir string) error { return WriteFiles(dir, map[string]string{"a/b.sh": "echo\n"}) }, "one")
	if err != nil {
		t.Fatal(err)
	}
	for name, set := range map[string]func(*http.Request){
		"basic":  func(r *http.Request) { r.SetBasicAuth("x-access-token", "tok-1") },
		"bearer": func(r *http.Request) { r.Header.Set("Authorization", "Bearer tok-1") },
	} {
		req, _ := http.NewRequest(http.MethodGet, repo.URL+"/info/refs?service=git-upload-pack", nil)
		set(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), head) {
			t.Errorf("%s: status %d, head %s advertised: %v", name, resp.StatusCode, head, strings.Contains(string(body), head))
		}
	}
	req, _ := http.NewRequest(http.MethodGet, repo.URL+"/info/refs?service=git-upload-pack", nil)
	req.SetBasicAuth("x-access-token", "wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || s.Count(Unauthorized) != 1 {
		t.Errorf("wrong token: status %d, unauthorized count %d", resp.StatusCode, s.Count(Unauthorized))
	}
}
