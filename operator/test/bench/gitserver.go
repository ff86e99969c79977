package main

import (
	"github.com/homystack/nio/testkit/gittest"
)

// gitServer serves the benchmark's repositories with the real `git http-backend`
// (testkit/gittest) on loopback, counting the requests the operator makes.
type gitServer struct{ *gittest.Server }

func startGitServer(root string) (*gitServer, error) {
	s, err := gittest.Serve(root, gittest.Options{}, nil)
	if err != nil {
		return nil, err
	}
	return &gitServer{s}, nil
}

func (g *gitServer) close() { g.Close() }

type gitCounts struct {
	LsRemotes int64 `json:"lsRemotes"`
	Fetches   int64 `json:"fetches"`
}

func (g *gitServer) counts() gitCounts {
	return gitCounts{LsRemotes: int64(g.Count(gittest.LsRemote)), Fetches: int64(g.Count(gittest.Fetch))}
}

func (c gitCounts) minus(o gitCounts) gitCounts {
	return gitCounts{LsRemotes: c.LsRemotes - o.LsRemotes, Fetches: c.Fetches - o.Fetches}
}

// gitRepo is a repository the benchmark pushes whole trees to.
type gitRepo struct {
	*gittest.WorkRepo
	url string
}

func (g *gitServer) newRepo(name string) (*gitRepo, error) {
	r, err := g.CreateWorkRepo(name)
	if err != nil {
		return nil, err
	}
	return &gitRepo{WorkRepo: r, url: r.URL}, nil
}

// commit replaces the tree with files, commits and pushes; it returns the commit.
func (r *gitRepo) commit(files map[string]string, msg string) (string, error) {
	return r.Commit(func(dir string) error { return gittest.WriteFiles(dir, files) }, msg)
}
