package gittest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// WorkRepo is a repository on a Server with a work tree a developer pushes from,
// usable outside tests (the demo, the benchmark). Each commit replaces the whole tree.
type WorkRepo struct {
	// URL is the repository's URL on the server.
	URL        string
	bare, work string
}

// CreateWorkRepo creates the bare repository name (served at RepoURL(name), default
// branch main) and a work tree beside it.
func (s *Server) CreateWorkRepo(name string) (*WorkRepo, error) {
	if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" || strings.HasPrefix(name, ".") {
		return nil, fmt.Errorf("gittest: bad repository name %q", name)
	}
	r := &WorkRepo{URL: s.RepoURL(name), bare: filepath.Join(s.root, name+".git"), work: filepath.Join(s.root, name+".work")}
	if err := gitRun("", "init", "--quiet", "--bare", "--initial-branch=main", r.bare); err != nil {
		return nil, err
	}
	if err := gitRun("", "init", "--quiet", "--initial-branch=main", r.work); err != nil {
		return nil, err
	}
	return r, nil
}

// Commit empties the work tree, lets write fill it, commits everything with msg,
// pushes to main and returns the new commit.
func (r *WorkRepo) Commit(write func(dir string) error, msg string) (string, error) {
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
	if err := write(r.work); err != nil {
		return "", err
	}
	for _, argv := range [][]string{
		{"add", "--all"},
		{"-c", "user.name=NIO", "-c", "user.email=nio@nio.invalid", "commit", "--quiet", "--allow-empty", "-m", msg},
		{"push", "--quiet", r.bare, "HEAD:refs/heads/main"},
	} {
		if err := gitRun(r.work, argv...); err != nil {
			return "", err
		}
	}
	return r.Head()
}

// Head is the commit main points at on the server.
func (r *WorkRepo) Head() (string, error) {
	out, err := exec.Command("git", "--git-dir", r.bare, "rev-parse", "refs/heads/main").Output()
	if err != nil {
		return "", fmt.Errorf("git rev-parse main: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// WriteFiles writes files (slash-separated path → content) under dir; a `.sh` file is
// executable.
func WriteFiles(dir string, files map[string]string) error {
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

func gitRun(dir string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
