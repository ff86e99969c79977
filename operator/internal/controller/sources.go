package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/homystack/nio/operator/internal/render"
	"github.com/homystack/nio/operator/internal/source"
)

// Sources resolves refs and renders archives for the configurations. Rendered
// archives are cached by repository, commit and additional files, so a fleet whose
// configurations share a repository renders (and hashes) each commit once, and
// concurrent renders of one archive coalesce.
type Sources struct {
	Cache *source.Cache
	// MaxArchives bounds the cache of rendered archives (default 64).
	MaxArchives int

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
		return nil, asConfigError(err)
	}
	repo, err := s.Cache.Repo(url, c)
	if err != nil {
		return nil, asConfigError(err)
	}
	return repo, nil
}

// Render returns the archive of commit plus files, with the map of secretPaths
// (render.Render: the secrets' contents are not part of the source).
func (s *Sources) Render(ctx context.Context, repo *source.Repo, commit string, files []render.File, secretPaths []string) (render.Archive, error) {
	key := archiveKey(repo.String(), commit, files, secretPaths)
	if a, ok := s.cached(key); ok {
		return a, nil
	}
	v, err, _ := s.group.Do(key, func() (any, error) {
		if a, ok := s.cached(key); ok {
			return a, nil
		}
		tree, err := repo.Tree(ctx, commit)
		if err != nil {
			return nil, err
		}
		a, err := render.Render(tree, files, secretPaths)
		if err != nil {
			return nil, asConfigError(fmt.Errorf("render %s: %w", shortCommit(commit), err))
		}
		s.store(key, a)
		return a, nil
	})
	if err != nil {
		return render.Archive{}, err
	}
	return v.(render.Archive), nil
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

// archiveKey identifies an archive by its inputs. The files' contents are hashed, so
// the key holds no secret.
func archiveKey(repo, commit string, files []render.File, secretPaths []string) string {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%q %d\n", f.Path, len(f.Content))
		h.Write(f.Content)
	}
	for _, p := range secretPaths {
		fmt.Fprintf(h, "secret %q\n", p)
	}
	return repo + "\x00" + commit + "\x00" + hex.EncodeToString(h.Sum(nil))
}
