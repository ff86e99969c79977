package harness

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/homystack/nio/testkit/gittest"
	"github.com/homystack/nio/testkit/nixtest"
)

// RepoName is the served repository's name.
const RepoName = "nixos-configs"

// GitServer serves one repository with `git http-backend` (testkit/gittest) and token
// auth the way forges take an access token, and commits to it from a work tree as a
// developer would push.
type GitServer struct {
	// RepoURL is the repository's URL (http://127.0.0.1:<port>/nixos-configs.git).
	RepoURL string
	// Token is the access token the server accepts (goes into the git-credentials Secret).
	Token string

	repo *gittest.WorkRepo
	srv  *gittest.Server
	env  *Env
}

// StartGitServer creates the repository and serves it on loopback until cleanup.
func StartGitServer(e *Env) (*GitServer, error) {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	g := &GitServer{Token: hex.EncodeToString(tok), env: e}
	srv, err := gittest.Serve(e.Path("git"), gittest.Options{Auth: gittest.AuthToken, Token: g.Token}, nil)
	if err != nil {
		return nil, err
	}
	e.Cleanup.Add("git server", func() error { srv.Close(); return nil })
	g.srv = srv
	if g.repo, err = srv.CreateWorkRepo(RepoName); err != nil {
		return nil, err
	}
	g.RepoURL = g.repo.URL
	return g, nil
}

// CommitFixture replaces the work tree with nixtest fixture flake (basic, sleep, …)
// plus vars, commits it with msg and pushes it; it returns the new HEAD.
func (g *GitServer) CommitFixture(fixture string, vars map[string]string, msg string) (string, error) {
	return g.CommitFixtureFiles(fixture, vars, nil, msg)
}

// CommitFixtureFiles is CommitFixture with more files (slash-separated path →
// content), e.g. a configuration module beside the flake.
func (g *GitServer) CommitFixtureFiles(fixture string, vars, files map[string]string, msg string) (string, error) {
	head, err := g.repo.Commit(func(dir string) error {
		if err := nixtest.WriteFlake(dir, fixture, vars); err != nil {
			return err
		}
		return gittest.WriteFiles(dir, files)
	}, msg)
	if err != nil {
		return "", err
	}
	g.env.Printf("\n$ git commit -m %q && git push   → %s\n", msg, head)
	return head, nil
}

// Head is the commit main points at on the server.
func (g *GitServer) Head() (string, error) { return g.repo.Head() }

// NewRepo creates another repository named name on the same server, with the same
// token (the guide's git-credentials Secret reads it): commits to it reach only the
// configurations that name it, not the guide's.
func (g *GitServer) NewRepo(name string) (*GitServer, error) {
	repo, err := g.srv.CreateWorkRepo(name)
	if err != nil {
		return nil, err
	}
	return &GitServer{RepoURL: repo.URL, Token: g.Token, repo: repo, srv: g.srv, env: g.env}, nil
}
