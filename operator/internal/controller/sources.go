package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/render"
	"github.com/homystack/nio/operator/internal/source"
)

// Sources resolves refs and renders archives for the configurations. Rendered
// archives are cached by repository and credentials (source.Repo.ID), commit and
// additional files, so a fleet whose configurations share a repository and
// credentials renders (and hashes) each commit once, and concurrent renders of one
// archive coalesce. Configurations with other credentials (another namespace's
// Secret, or none) never share an archive: they must fetch the tree themselves.
type Sources struct {
	Cache *source.Cache
	// MaxArchives bounds the cache of rendered archives (default 64).
	MaxArchives int
	// RenderTimeout bounds one render (fetch, tree read, pack) shared by every
	// caller waiting for it (default 10 minutes).
	RenderTimeout time.Duration

	group singleflight.Group
	mu    sync.Mutex
	order []string
	byKey map[string]render.Archive
}

// Repo returns the shared repository entry for url reached with the Secret data
// creds (nil: anonymous).
func (s *Sources) Repo(url string, creds map[string][]byte) (*source.Repo, error) {
	c, err := source.ParseCredentials(creds)
	if err != nil {
		return nil, outcome.AsConfigError(err)
	}
	repo, err := s.Cache.Repo(url, c)
	if err != nil {
		return nil, outcome.AsConfigError(err)
	}
	return repo, nil
}

// Render returns the archive of commit plus files, with the map of secretPaths
// (render.Render: the secrets' contents are not part of the source). Concurrent
// calls for one archive share one render, which runs on its own deadline: a caller
// that gives up (its pass cancelled) returns at once without failing the others.
func (s *Sources) Render(ctx context.Context, repo *source.Repo, commit string, files []render.File, secretPaths []string) (render.Archive, error) {
	key := archiveKey(repo.ID(), commit, files, secretPaths)
	if a, ok := s.cached(key); ok {
		return a, nil
	}
	ch := s.group.DoChan(key, func() (any, error) {
		if a, ok := s.cached(key); ok {
			return a, nil
		}
		// Detached from the first caller's cancellation (its values, e.g. the
		// logger, are kept): the render is everyone's who waits for it.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.renderTimeout())
		defer cancel()
		tree, err := repo.Tree(ctx, commit)
		if err != nil {
			return nil, err
		}
		a, err := render.Render(tree, files, secretPaths)
		if err != nil {
			return nil, outcome.AsConfigError(fmt.Errorf("render %s: %w", shortCommit(commit), err))
		}
		s.store(key, a)
		return a, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return render.Archive{}, res.Err
		}
		return res.Val.(render.Archive), nil
	case <-ctx.Done():
		return render.Archive{}, fmt.Errorf("render %s: %w", shortCommit(commit), ctx.Err())
	}
}

func (s *Sources) renderTimeout() time.Duration {
	if s.RenderTimeout > 0 {
		return s.RenderTimeout
	}
	return 10 * time.Minute
}

func (s *Sources) cached(key string) (render.Archive, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byKey[key]
	return a, ok
}

func (s *Sources) store(key string, a render.Archive) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byKey == nil {
		s.byKey = map[string]render.Archive{}
	}
	if _, ok := s.byKey[key]; ok {
		return
	}
	max := s.MaxArchives
	if max <= 0 {
		max = 64
	}
	for len(s.order) >= max {
		delete(s.byKey, s.order[0])
		s.order = s.order[1:]
	}
	s.byKey[key] = a
	s.order = append(s.order, key)
}

// archiveKey identifies an archive by its inputs: repoID names the repository with
// its credentials. The files' contents are hashed, so the key holds no secret.
func archiveKey(repoID, commit string, files []render.File, secretPaths []string) string {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%q %d\n", f.Path, len(f.Content))
		h.Write(f.Content)
	}
	for _, p := range secretPaths {
		fmt.Fprintf(h, "secret %q\n", p)
	}
	return repoID + "\x00" + commit + "\x00" + hex.EncodeToString(h.Sum(nil))
}
