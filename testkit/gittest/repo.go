package gittest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultBranch is the branch CommitFiles and CommitDir commit to.
const DefaultBranch = "main"

// commitEpoch is the author/committer date of a repository's first commit; later
// commits are one second apart, so hashes are reproducible yet two commits of the
// same tree on the same parent still differ.
var commitEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Repo is a bare repository on disk.
type Repo struct {
	// Dir is the bare repository's directory.
	Dir string

	url     string
	mu      sync.Mutex
	commits int
}

// NewLocalRepo creates an empty bare repository in a temporary directory, reachable
// only as a file:// URL (URL and FileURL are the same).
func NewLocalRepo(t testing.TB, name string) *Repo {
	t.Helper()
	r := newRepo(t, filepath.Join(t.TempDir(), checkName(t, name)+".git"))
	r.url = r.FileURL()
	return r
}

func newRepo(t testing.TB, dir string) *Repo {
	t.Helper()
	r := &Repo{Dir: dir}
	r.git(t, nil, "init", "--quiet", "--bare", "--initial-branch="+DefaultBranch)
	return r
}

// URL is the URL clients use: the server's HTTP(S) URL, or file:// for NewLocalRepo.
func (r *Repo) URL() string { return r.url }

// FileURL is the file:// URL of the bare repository, whatever server serves it.
func (r *Repo) FileURL() string { return "file://" + r.Dir }

// CommitFiles commits a tree holding exactly files (slash-separated path → content,
// regular 0644 files; parent directories are implied) on top of DefaultBranch and
// returns the commit hash. Files of the previous commit not named here are gone.
func (r *Repo) CommitFiles(t testing.TB, files map[string]string, msg string) string {
	t.Helper()
	return r.CommitFilesOn(t, DefaultBranch, files, msg)
}

// CommitFilesOn is CommitFiles on another branch (created when missing, starting
// without a parent).
func (r *Repo) CommitFilesOn(t testing.TB, branch string, files map[string]string, msg string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatalf("gittest: %v", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatalf("gittest: %v", err)
		}
	}
	return r.CommitDirOn(t, branch, dir, msg)
}

// CommitDir commits the content of dir — modes (executable bit), symlinks and empty
// files as git records them; a .git inside dir is ignored — as the whole tree of a
// new commit on DefaultBranch, and returns its hash.
func (r *Repo) CommitDir(t testing.TB, dir, msg string) string {
	t.Helper()
	return r.CommitDirOn(t, DefaultBranch, dir, msg)
}

// CommitDirOn is CommitDir on another branch.
func (r *Repo) CommitDirOn(t testing.TB, branch, dir, msg string) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	// A private index and dir as the work tree: the bare repository gets the commit
	// without a checkout, and dir is left untouched.
	env := []string{
		"GIT_INDEX_FILE=" + filepath.Join(t.TempDir(), "index"),
		"GIT_WORK_TREE=" + dir,
	}
	r.git(t, env, "add", "--all", "--force", ".")
	tree := r.git(t, env, "write-tree")
	args := []string{"commit-tree", tree, "-m", msg}
	if parent, ok := r.resolve(t, "refs/heads/"+branch); ok {
		args = append(args, "-p", parent)
	}
	date := commitEpoch.Add(time.Duration(r.commits) * time.Second).Format(time.RFC3339)
	r.commits++
	env = append(env, "GIT_AUTHOR_DATE="+date, "GIT_COMMITTER_DATE="+date)
	hash := r.git(t, env, args...)
	r.git(t, nil, "update-ref", "refs/heads/"+branch, hash)
	return hash
}

// Tag creates (or moves) a lightweight tag name at hash.
func (r *Repo) Tag(t testing.TB, name, hash string) {
	t.Helper()
	r.git(t, nil, "tag", "--force", name, hash)
}

// AnnotatedTag creates (or moves) an annotated tag name at hash and returns the hash
// of the tag object (which is not the commit's).
func (r *Repo) AnnotatedTag(t testing.TB, name, hash, msg string) string {
	t.Helper()
	env := []string{"GIT_COMMITTER_DATE=" + commitEpoch.Format(time.RFC3339)}
	r.git(t, env, "tag", "--force", "--annotate", "--message", msg, name, hash)
	return r.git(t, nil, "rev-parse", "refs/tags/"+name)
}

// SetBranch points branch at hash (creating it), e.g. to move a branch backwards.
func (r *Repo) SetBranch(t testing.TB, branch, hash string) {
	t.Helper()
	r.git(t, nil, "update-ref", "refs/heads/"+branch, hash)
}

// Head returns the commit branch points at; the test fails if it does not exist.
func (r *Repo) Head(t testing.TB, branch string) string {
	t.Helper()
	hash, ok := r.resolve(t, "refs/heads/"+branch)
	if !ok {
		t.Fatalf("gittest: branch %q does not exist in %s", branch, r.Dir)
	}
	return hash
}

func (r *Repo) resolve(t testing.TB, ref string) (string, bool) {
	t.Helper()
	cmd := r.command(nil, "rev-parse", "--verify", "--quiet", ref+"^{commit}")
	out, err := cmd.Output()
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(out)), true
}

// git runs the git binary on the bare repository and returns its trimmed stdout.
func (r *Repo) git(t testing.TB, env []string, args ...string) string {
	t.Helper()
	cmd := r.command(env, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gittest: git %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func (r *Repo) command(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command("git", args...)
	cmd.Env = append(os.Environ(),
		"GIT_DIR="+r.Dir,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=gittest", "GIT_AUTHOR_EMAIL=gittest@example.invalid",
		"GIT_COMMITTER_NAME=gittest", "GIT_COMMITTER_EMAIL=gittest@example.invalid",
	)
	cmd.Env = append(cmd.Env, env...)
	if wt := lookup(env, "GIT_WORK_TREE"); wt != "" {
		cmd.Dir = wt
	}
	return cmd
}

func lookup(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// String names the repository in test output.
func (r *Repo) String() string { return fmt.Sprintf("gittest repo %s", r.url) }
