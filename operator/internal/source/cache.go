// Package source keeps the Git repositories NixosConfigurations name: one entry per
// repository URL and credentials, shared by every configuration naming that pair. It
// resolves refs with ls-remote, fetches a commit only when it is not held yet, and
// reads the tree at a commit. It is built on go-git; nothing runs the git binary.
//
// Network calls per repository: concurrent Resolve calls share one ls-remote, and an
// ls-remote answer is reused for Options.MinInterval, so a fleet of configurations on
// one repository polling on the same period makes about one ls-remote per
// MinInterval, not one per configuration (Invalidate forgets the answer, e.g. when a
// push webhook arrives). A fetch happens only for a commit not held yet: shallow
// (depth 1) where the server allows, else a full fetch.
//
// Storage: in memory by default; on disk under Options.Dir when set, one bare
// repository per URL+credentials, so a restarted operator does not fetch again.
// Objects are not pruned while a repository is in use; a repository unused for
// Options.IdleTimeout is forgotten — refs, objects and directory — so repositories
// no configuration names any more (or credentials rotated away) do not pile up.
package source

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
	"github.com/go-git/go-git/v5/plumbing/transport/server"
	"github.com/go-logr/logr"
)

// Options configure a Cache. The zero value is usable.
type Options struct {
	// Dir, when set, holds the repositories on disk (created 0700 if missing);
	// empty keeps them in memory.
	Dir string
	// MinInterval is how long an ls-remote answer is reused by Resolve. Zero asks
	// the server on every Resolve that does not join one already in flight.
	MinInterval time.Duration
	// Timeout bounds one network operation (ls-remote or fetch); default 2 minutes.
	// A network call shared by several callers runs until it finishes or times out,
	// even if the caller that started it gives up.
	Timeout time.Duration
	// Logger receives V(1) lines for network calls; URLs are logged redacted.
	Logger logr.Logger
	// IdleTimeout is how long a repository may go unused (no Repo lookup, Resolve
	// or Tree) before the cache forgets it; default 1 hour. A configuration polling
	// less often than that fetches its commit again on its next poll (a shallow
	// fetch), which costs less than holding every repository ever named.
	IdleTimeout time.Duration
}

// Stats counts what a Cache did, for metrics.
type Stats struct {
	// LsRemotes is the number of ref listings Resolve sent to servers.
	LsRemotes int64
	// Fetches is the number of fetches sent (each also lists refs on the wire).
	Fetches int64
	// ResolvesShared counts Resolve calls answered by another call's ls-remote.
	ResolvesShared int64
	// ResolvesCached counts Resolve calls answered from an ls-remote younger than
	// MinInterval.
	ResolvesCached int64
	// Repos is the number of repositories held now.
	Repos int
	// Evicted counts repositories forgotten after IdleTimeout unused.
	Evicted int64
}

// Cache holds Repos; it is safe for concurrent use.
type Cache struct {
	opts    Options
	hmacKey []byte

	mu    sync.Mutex
	repos map[string]*Repo
	// swept is when idle repositories were last looked for.
	swept time.Time

	lsRemotes, fetches, shared, cached, evicted atomic.Int64

	// now is the clock (tests move it to age repositories).
	now func() time.Time

	// onJoin, when set (tests only), runs when a Resolve joins an ls-remote in flight.
	onJoin func()

	// onChange, when set, is told the URL of a repository whose refs a listing found
	// changed since the previous listing (OnRefsChanged).
	onChange atomic.Pointer[func(url string)]
}

// OnRefsChanged makes the cache call f (on its own goroutine) with the URL of a
// repository whenever a listing finds its refs changed since the previous one. A
// listing asked for by Invalidate (a push webhook, whose receiver queues the
// repository's users itself) or the first of a repository does not call it. With
// ResolveWithin polling each repository once per interval, this is how a commit one
// configuration's poll finds reaches every configuration of the repository.
func (c *Cache) OnRefsChanged(f func(url string)) { c.onChange.Store(&f) }

var installFileTransport sync.Once

// NewCache makes a cache. With Options.Dir set, a random key in Dir/key (0600,
// created once) derives the per-credentials directory names.
func NewCache(opts Options) (*Cache, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = time.Hour
	}
	// go-git's file:// transport runs git-upload-pack; its in-process server reads
	// the repository itself, so file:// works without a git binary.
	installFileTransport.Do(func() {
		client.InstallProtocol("file", server.NewClient(server.NewFilesystemLoader(osfs.New(""))))
	})
	c := &Cache{opts: opts, repos: map[string]*Repo{}, now: time.Now}
	var err error
	if opts.Dir == "" {
		c.hmacKey = make([]byte, 32)
		_, err = rand.Read(c.hmacKey)
	} else {
		c.hmacKey, err = loadOrCreateKey(opts.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("source cache: %w", err)
	}
	return c, nil
}

func loadOrCreateKey(dir string) ([]byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "key")
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, err = f.Write(key)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return key, err
	}
	if !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	key, err = os.ReadFile(path)
	if err == nil && len(key) != 32 {
		err = fmt.Errorf("%s is not a 32-byte key; remove it to start a fresh cache", path)
	}
	return key, err
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	repos := len(c.repos)
	c.mu.Unlock()
	return Stats{
		LsRemotes: c.lsRemotes.Load(), Fetches: c.fetches.Load(),
		ResolvesShared: c.shared.Load(), ResolvesCached: c.cached.Load(),
		Repos: repos, Evicted: c.evicted.Load(),
	}
}

// Repo returns the shared entry for rawURL reached with creds, creating it on first
// use. It fails with ErrInvalidURL or ErrInvalidCredentials (e.g. an SSH URL without
// known_hosts) before any network call.
func (c *Cache) Repo(rawURL string, creds Credentials) (*Repo, error) {
	ep, err := transport.NewEndpoint(rawURL)
	// go-git reads any string that is not a URL as a local path; only an explicit
	// file:// URL may name one.
	if err != nil || ep.Host == "" && ep.Protocol != "file" || ep.Path == "" ||
		ep.Protocol == "file" && !strings.HasPrefix(rawURL, "file://") {
		return nil, fmt.Errorf("repository %s: %w", RedactURL(rawURL), ErrInvalidURL)
	}
	key := rawURL + "\x00" + creds.fingerprint(c.hmacKey)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked()
	if r, ok := c.repos[key]; ok {
		r.touch()
		return r, nil
	}
	// Only a valid pair gets an entry, so a hit needs no second check.
	auth, err := creds.authFor(ep)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", RedactURL(rawURL), err)
	}
	sum := sha256.Sum256([]byte(key))
	r := &Repo{
		cache: c, id: hex.EncodeToString(sum[:16]), url: rawURL, redacted: RedactURL(rawURL), auth: auth, caPEM: creds.caPEM,
		secrets: append(creds.secrets(), urlSecrets(rawURL)...),
		// A shallow fetch needs server support; the in-process file:// server has none.
		shallow: ep.Protocol != "file",
	}
	if ep.Protocol == "file" {
		r.localPath = ep.Path
	}
	if c.opts.Dir != "" {
		r.dir = filepath.Join(c.opts.Dir, r.id+".git")
	}
	r.touch()
	c.repos[key] = r
	return r, nil
}

// sweepLocked forgets the repositories unused for IdleTimeout, at most once per
// tenth of it (the lookups of a large fleet must not each walk the map). Callers
// hold c.mu.
func (c *Cache) sweepLocked() {
	now := c.now()
	idle := c.opts.IdleTimeout
	if now.Sub(c.swept) < idle/10 {
		return
	}
	c.swept = now
	for key, r := range c.repos {
		if now.Sub(time.Unix(0, r.lastUsed.Load())) < idle {
			continue
		}
		// Released here, before a new entry for the key can reuse its directory. A
		// repository whose store is busy (a fetch started by a caller holding an old
		// handle) is in use after all; the next sweep looks again.
		if !r.store.mu.TryLock() {
			continue
		}
		r.releaseLocked()
		r.store.mu.Unlock()
		delete(c.repos, key)
		c.evicted.Add(1)
		c.opts.Logger.V(1).Info("forget idle repository", "repo", r.redacted)
	}
}

// Repo is one repository reached with one set of credentials; safe for concurrent use.
type Repo struct {
	cache *Cache
	// id names the URL+credentials pair without revealing either (a hash of the URL
	// and the credentials' keyed fingerprint).
	id       string
	url      string
	redacted string
	auth     transport.AuthMethod
	caPEM    []byte
	secrets  []string
	dir      string
	shallow  bool
	// localPath is the directory of a file:// repository, read directly for refs.
	localPath string

	// lastUsed is when the repository was last looked up or read (Unix nanoseconds).
	lastUsed atomic.Int64

	lsMu     sync.Mutex
	refs     map[string]string // ref name → commit (annotated tags peeled)
	listedAt time.Time
	inflight *lsCall
	// gen counts Invalidate calls: a listing started before the latest one may
	// predate a push, so it is neither joined nor cached.
	gen uint64

	store storeState
}

type lsCall struct {
	gen  uint64
	done chan struct{}
	refs map[string]string
	err  error
}

// String is the redacted URL.
func (r *Repo) String() string { return r.redacted }

func (r *Repo) touch() { r.lastUsed.Store(r.cache.now().UnixNano()) }

// releaseLocked drops what an evicted repository holds: its objects (memory or
// directory) and its refs. Callers hold r.store.mu. A Repo is meant to be used right
// after Cache.Repo returns it, not kept: one used after eviction still works (its
// storage opens again, empty, and Tree fetches) but no longer shares with others.
func (r *Repo) releaseLocked() {
	r.store.storer = nil
	if r.dir != "" {
		if err := os.RemoveAll(r.dir); err != nil {
			r.cache.opts.Logger.Info("remove idle repository", "repo", r.redacted, "error", err.Error())
		}
	}
	r.lsMu.Lock()
	r.refs, r.listedAt = nil, time.Time{}
	r.lsMu.Unlock()
}

// ID identifies the repository together with the credentials it is reached with: two
// Repos have the same ID only if they have the same URL and equal credentials. Caches
// of what a Repo produced (rendered archives) key on it, so a configuration whose
// credentials differ never gets what another's credentials fetched. It holds no
// secret and may be logged.
func (r *Repo) ID() string { return r.id }

var fullHash = regexp.MustCompile(`^[0-9a-fA-F]{40}$`)

// Resolve returns the full commit hash ref names now: a branch (`main` or
// `refs/heads/main`), a tag (annotated tags are peeled to their commit), `HEAD`, or
// a full 40-hex commit. A name that is both a branch and a tag resolves to the branch.
//
// A full commit is returned as is, but only once these credentials have shown they
// can read the repository: either this Repo already fetched the commit (with its own
// credentials), or a listing succeeds (shared and reused like any other). Otherwise
// a caller without access to a private repository would be told its commit resolves
// (Tree reports ErrRefNotFound if the repository lacks the commit).
func (r *Repo) Resolve(ctx context.Context, ref string) (string, error) {
	return r.ResolveWithin(ctx, ref, 0)
}

// ResolveWithin is Resolve answered from a listing up to maxAge old (or
// MinInterval, whichever is longer): configurations polling every interval share
// one listing per interval instead of one per MinInterval.
func (r *Repo) ResolveWithin(ctx context.Context, ref string, maxAge time.Duration) (string, error) {
	r.touch()
	if fullHash.MatchString(ref) {
		commit := strings.ToLower(ref)
		if r.Has(commit) {
			return commit, nil
		}
		if _, err := r.listRefs(ctx, maxAge); err != nil {
			return "", fmt.Errorf("resolve %s: %w", commit, err)
		}
		return commit, nil
	}
	if ref == "" {
		return "", fmt.Errorf("resolve in %s: %w: empty ref", r.redacted, ErrRefNotFound)
	}
	for {
		refs, err := r.listRefs(ctx, maxAge)
		if err != nil {
			return "", fmt.Errorf("resolve %q: %w", ref, err)
		}
		for _, name := range candidates(ref) {
			if hash, ok := refs[name]; ok {
				return hash, nil
			}
		}
		if maxAge <= r.cache.opts.MinInterval {
			break
		}
		// A ref missing from an older listing may have been pushed since.
		maxAge = 0
	}
	return "", fmt.Errorf("resolve %q in %s: %w: no branch or tag of that name", ref, r.redacted, ErrRefNotFound)
}

func candidates(ref string) []string {
	if ref == "HEAD" || strings.HasPrefix(ref, "refs/") {
		return []string{ref}
	}
	return []string{"refs/heads/" + ref, "refs/tags/" + ref}
}

// Invalidate forgets the last ls-remote answer, so the next Resolve asks the server
// even within MinInterval (a push webhook calls this).
func (r *Repo) Invalidate() {
	r.lsMu.Lock()
	defer r.lsMu.Unlock()
	r.listedAt = time.Time{}
	r.gen++
}

// listRefs returns the remote's refs: a previous answer younger than maxAge or
// MinInterval, the answer of a listing in flight, or a new listing.
func (r *Repo) listRefs(ctx context.Context, maxAge time.Duration) (map[string]string, error) {
	c := r.cache
	maxAge = max(maxAge, c.opts.MinInterval)
	r.lsMu.Lock()
	if !r.listedAt.IsZero() && maxAge > 0 && time.Since(r.listedAt) < maxAge {
		refs := r.refs
		r.lsMu.Unlock()
		c.cached.Add(1)
		return refs, nil
	}
	call := r.inflight
	if call != nil && call.gen == r.gen {
		r.lsMu.Unlock()
		c.shared.Add(1)
		if c.onJoin != nil {
			c.onJoin()
		}
	} else {
		call = &lsCall{gen: r.gen, done: make(chan struct{})}
		r.inflight = call
		r.lsMu.Unlock()
		// Detached from ctx: other callers may be waiting on this listing.
		go r.runList(context.WithoutCancel(ctx), call)
	}
	select {
	case <-call.done:
		return call.refs, call.err
	case <-ctx.Done():
		return nil, classify("ls-remote", r.redacted, ctx.Err(), nil)
	}
}

func (r *Repo) runList(ctx context.Context, call *lsCall) {
	ctx, cancel := context.WithTimeout(ctx, r.cache.opts.Timeout)
	defer cancel()
	r.cache.lsRemotes.Add(1)
	r.cache.opts.Logger.V(1).Info("ls-remote", "repo", r.redacted)
	refs, err := r.lsRemote(ctx)
	if err != nil {
		err = classify("ls-remote", r.redacted, err, r.secrets)
	}
	call.refs, call.err = refs, err
	r.lsMu.Lock()
	changed := false
	if err == nil && call.gen == r.gen {
		changed = !r.listedAt.IsZero() && !maps.Equal(r.refs, refs)
		r.refs, r.listedAt = refs, time.Now()
	}
	if f := r.cache.onChange.Load(); changed && f != nil {
		go (*f)(r.url)
	}
	if r.inflight == call {
		r.inflight = nil
	}
	r.lsMu.Unlock()
	close(call.done)
}

// commitRef returns a ref name the last listing showed at commit, to fetch just that.
func (r *Repo) commitRef(commit string) string {
	r.lsMu.Lock()
	defer r.lsMu.Unlock()
	for name, hash := range r.refs {
		if hash == commit && name != "HEAD" {
			return name
		}
	}
	return ""
}

// RedactURL is raw without its credentials, for logs.
func RedactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return raw
}

// urlSecrets returns the password embedded in a URL's userinfo, if any.
func urlSecrets(raw string) []string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			return []string{p}
		}
	}
	return nil
}

// urlEscape is s as it appears in a URL's userinfo.
func urlEscape(s string) string {
	return strings.TrimPrefix(url.UserPassword("x", s).String(), "x:")
}

// Revision formats a resolved ref the way Flux prints revisions, for status and
// events: `main@sha1:<hex>`, or `sha1:<hex>` when the ref was the commit itself.
func Revision(ref, commit string) string {
	if strings.EqualFold(ref, commit) {
		return "sha1:" + commit
	}
	name := strings.TrimPrefix(strings.TrimPrefix(ref, "refs/heads/"), "refs/tags/")
	return name + "@sha1:" + commit
}

// InvalidateMatching invalidates every repository whose URL match accepts (a push
// webhook names a repository; configurations may spell its URL differently) and
// returns how many it invalidated.
func (c *Cache) InvalidateMatching(match func(url string) bool) int {
	c.mu.Lock()
	repos := make([]*Repo, 0, len(c.repos))
	for _, r := range c.repos {
		if match(r.url) {
			repos = append(repos, r)
		}
	}
	c.mu.Unlock()
	for _, r := range repos {
		r.Invalidate()
	}
	return len(repos)
}
