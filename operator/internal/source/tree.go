package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/go-git/go-git/v5/storage/memory"
)

// Mode is the kind of a tree entry.
type Mode int

const (
	// Regular is a non-executable file.
	Regular Mode = iota
	// Executable is a file with the executable bit.
	Executable
	// Symlink is a symbolic link; Entry.Content is its target.
	Symlink
)

// String names the mode.
func (m Mode) String() string {
	switch m {
	case Executable:
		return "executable"
	case Symlink:
		return "symlink"
	}
	return "regular"
}

// Entry is one file of a commit's tree. Directories are implied by paths.
type Entry struct {
	// Path is slash-separated and relative to the repository root.
	Path string
	Mode Mode
	// Content is the file's bytes, or a symlink's target.
	Content []byte
}

// storeState guards a Repo's object storage. go-git storages are not safe for a
// fetch running alongside a read, so fetches and tree reads of one repository take
// turns; different repositories do not wait for each other.
type storeState struct {
	mu     sync.Mutex
	storer storage.Storer
}

// Tree returns the files of commit (sorted by path, without .git; submodules are
// left out as git archive leaves them empty), fetching the commit first when it is
// not held yet. A commit the repository does not have is ErrRefNotFound.
func (r *Repo) Tree(ctx context.Context, commit string) ([]Entry, error) {
	if !fullHash.MatchString(commit) {
		return nil, fmt.Errorf("tree of %q in %s: %w: not a full commit hash", commit, r.redacted, ErrRefNotFound)
	}
	commit = strings.ToLower(commit)
	r.touch()
	r.store.mu.Lock()
	defer r.store.mu.Unlock()
	s, err := r.ensure(ctx, commit)
	if err != nil {
		return nil, fmt.Errorf("tree of %s: %w", commit, err)
	}
	entries, err := readTree(s, plumbing.NewHash(commit))
	if err != nil {
		return nil, fmt.Errorf("tree of %s in %s: %w", commit, r.redacted, err)
	}
	return entries, nil
}

// Has reports whether commit is held locally (no network).
func (r *Repo) Has(commit string) bool {
	r.store.mu.Lock()
	defer r.store.mu.Unlock()
	s, err := r.open()
	return err == nil && hasCommit(s, plumbing.NewHash(strings.ToLower(commit)))
}

// open returns the storage, creating it on first use. Callers hold r.store.mu.
func (r *Repo) open() (storage.Storer, error) {
	if r.store.storer != nil {
		return r.store.storer, nil
	}
	var s storage.Storer
	if r.dir == "" {
		s = memory.NewStorage()
	} else {
		s = filesystem.NewStorage(osfs.New(r.dir), cache.NewObjectLRUDefault())
	}
	if _, err := git.Init(s, nil); err != nil && !errors.Is(err, git.ErrRepositoryAlreadyExists) {
		return nil, fmt.Errorf("open cache of %s: %w", r.redacted, err)
	}
	r.store.storer = s
	return s, nil
}

func hasCommit(s storage.Storer, h plumbing.Hash) bool {
	_, err := s.EncodedObject(plumbing.CommitObject, h)
	return err == nil
}

type fetchAttempt struct {
	what  string
	specs []config.RefSpec
	depth int
}

// ensure makes commit present locally, fetching as little as the server allows:
// the ref the last ls-remote showed at commit (depth 1), then the commit by hash
// (depth 1, if the server allows wants of any reachable commit), then every branch
// and tag in full. Callers hold r.store.mu.
func (r *Repo) ensure(ctx context.Context, commit string) (storage.Storer, error) {
	s, err := r.open()
	if err != nil {
		return nil, err
	}
	hash := plumbing.NewHash(commit)
	if hasCommit(s, hash) {
		return s, nil
	}
	var attempts []fetchAttempt
	if r.shallow {
		if name := r.commitRef(commit); name != "" {
			attempts = append(attempts, fetchAttempt{what: name, depth: 1,
				specs: []config.RefSpec{config.RefSpec("+" + name + ":refs/nio/fetch/" + commit)}})
		}
		attempts = append(attempts, fetchAttempt{what: "commit", depth: 1,
			specs: []config.RefSpec{config.RefSpec(commit + ":refs/nio/commit/" + commit)}})
	}
	attempts = append(attempts, fetchAttempt{what: "all branches and tags", specs: []config.RefSpec{
		"+refs/heads/*:refs/nio/heads/*", "+refs/tags/*:refs/nio/tags/*",
	}})

	ctx, cancel := context.WithTimeout(ctx, r.cache.opts.Timeout)
	defer cancel()
	remote := git.NewRemote(s, &config.RemoteConfig{Name: "origin", URLs: []string{r.url}})
	var lastErr error
	for _, a := range attempts {
		r.cache.fetches.Add(1)
		r.cache.opts.Logger.V(1).Info("fetch", "repo", r.redacted, "commit", commit, "refs", a.what, "depth", a.depth)
		err := remote.FetchContext(ctx, &git.FetchOptions{
			RefSpecs: a.specs, Depth: a.depth, Auth: r.auth, CABundle: r.caPEM, Tags: git.NoTags, Force: true,
		})
		switch {
		case err == nil, errors.Is(err, git.NoErrAlreadyUpToDate), errors.Is(err, git.ErrExactSHA1NotSupported):
		default:
			cerr := classify("fetch", r.redacted, err, r.secrets)
			if errors.Is(cerr, ErrAuth) || errors.Is(cerr, ErrNotFound) || ctx.Err() != nil {
				return nil, cerr
			}
			// A refused shallow or by-hash fetch, or a ref deleted meanwhile: try the next way.
			lastErr = cerr
		}
		if hasCommit(s, hash) {
			return s, nil
		}
	}
	if lastErr != nil && errors.Is(lastErr, ErrNetwork) {
		return nil, lastErr
	}
	return nil, fmt.Errorf("fetch %s: %w: commit %s is not in any branch or tag", r.redacted, ErrRefNotFound, commit)
}

// lsRemote lists the remote's refs; annotated tags map to the commit they peel to,
// and HEAD to the commit of the branch it names.
func (r *Repo) lsRemote(ctx context.Context) (map[string]string, error) {
	if r.localPath != "" {
		return localRefs(r.localPath)
	}
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{r.url}})
	list, err := remote.ListContext(ctx, &git.ListOptions{Auth: r.auth, CABundle: r.caPEM, PeelingOption: git.AppendPeeled})
	if err != nil {
		return nil, err
	}
	refs := map[string]string{}
	peeled := map[string]string{}
	var symbolic []*plumbing.Reference
	for _, ref := range list {
		name := ref.Name().String()
		switch {
		case ref.Type() == plumbing.SymbolicReference:
			symbolic = append(symbolic, ref)
		case strings.HasSuffix(name, "^{}"):
			peeled[strings.TrimSuffix(name, "^{}")] = ref.Hash().String()
		default:
			refs[name] = ref.Hash().String()
		}
	}
	for name, hash := range peeled {
		refs[name] = hash
	}
	for _, ref := range symbolic {
		if hash, ok := refs[ref.Target().String()]; ok {
			refs[ref.Name().String()] = hash
		}
	}
	return refs, nil
}

// localRefs lists a file:// repository's refs by reading it: go-git's in-process
// server does not advertise peeled tags, and the objects are right here to peel them.
func localRefs(path string) (map[string]string, error) {
	repo, err := git.PlainOpen(path)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		return nil, transport.ErrRepositoryNotFound
	}
	if err != nil {
		return nil, err
	}
	iter, err := repo.References()
	if err != nil {
		return nil, err
	}
	refs := map[string]string{}
	err = iter.ForEach(func(ref *plumbing.Reference) error {
		if ref.Type() != plumbing.HashReference {
			return nil
		}
		hash := ref.Hash()
		if tag, err := repo.TagObject(hash); err == nil {
			commit, err := tag.Commit()
			if err != nil {
				return nil // a tag of something other than a commit names no tree to deploy
			}
			hash = commit.Hash
		}
		refs[ref.Name().String()] = hash.String()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if head, err := repo.Head(); err == nil {
		refs["HEAD"] = head.Hash().String()
	}
	if len(refs) == 0 {
		return nil, transport.ErrEmptyRemoteRepository
	}
	return refs, nil
}

func readTree(s storage.Storer, commit plumbing.Hash) ([]Entry, error) {
	c, err := object.GetCommit(s, commit)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefNotFound, err)
	}
	tree, err := c.Tree()
	if err != nil {
		return nil, err
	}
	walker := object.NewTreeWalker(tree, true, nil)
	defer walker.Close()
	var out []Entry
	for {
		name, entry, err := walker.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		var mode Mode
		switch entry.Mode {
		case filemode.Regular, filemode.Deprecated:
			mode = Regular
		case filemode.Executable:
			mode = Executable
		case filemode.Symlink:
			mode = Symlink
		default: // directories are implied; submodules have no content here
			continue
		}
		blob, err := object.GetBlob(s, entry.Hash)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		content, err := readBlob(blob)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, Entry{Path: name, Mode: mode, Content: content})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func readBlob(b *object.Blob) ([]byte, error) {
	rd, err := b.Reader()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(rd)
}
