// Package archive holds the source archives the operator sends: a cache by sha256
// digest in the state directory (so an unchanged source is never sent twice, also
// across restarts), verified while it is received, and a safe unpacker.
package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ErrTooLarge is returned when an archive or its unpacked content exceeds the cap.
var ErrTooLarge = errors.New("source exceeds the size cap")

// ParseDigest checks a "sha256:<64 hex>" digest.
func ParseDigest(d string) error {
	if !digestRE.MatchString(d) {
		return fmt.Errorf("source digest %q is not sha256:<64 lowercase hex>", d)
	}
	return nil
}

// Cache stores archives as <dir>/<hex>.tar.gz.
type Cache struct {
	dir string
	max int64
}

// NewCache makes (0700) and uses dir; archives larger than maxBytes are refused.
func NewCache(dir string, maxBytes int64) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("source cache: %w", err)
	}
	return &Cache{dir: dir, max: maxBytes}, nil
}

// Path is where the archive with digest lives, and whether it is there.
func (c *Cache) Path(digest string) (string, bool) {
	p := filepath.Join(c.dir, strings.TrimPrefix(digest, "sha256:")+".tar.gz")
	_, err := os.Stat(p)
	return p, err == nil
}

// Writer receives an archive; Commit checks size and digest and only then makes it
// visible in the cache, so a partial or forged archive is never found by digest.
type Writer struct {
	c      *Cache
	digest string
	size   int64
	f      *os.File
	h      hash.Hash
	n      int64
}

// Create starts receiving the archive announced with digest and size.
func (c *Cache) Create(digest string, size int64) (*Writer, error) {
	if err := ParseDigest(digest); err != nil {
		return nil, err
	}
	if size > c.max {
		return nil, fmt.Errorf("archive of %d bytes: %w (%d)", size, ErrTooLarge, c.max)
	}
	f, err := os.CreateTemp(c.dir, ".incoming-*")
	if err != nil {
		return nil, fmt.Errorf("source cache: %w", err)
	}
	return &Writer{c: c, digest: digest, size: size, f: f, h: sha256.New()}, nil
}

// Write appends a chunk, refusing to grow past the announced size or the cap.
func (w *Writer) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.c.max {
		return 0, fmt.Errorf("archive: %w (%d bytes)", ErrTooLarge, w.c.max)
	}
	if w.size > 0 && w.n+int64(len(p)) > w.size {
		return 0, fmt.Errorf("archive is longer than the announced %d bytes", w.size)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Commit verifies the digest and size and moves the archive into place.
func (w *Writer) Commit() (string, error) {
	defer w.Abort()
	if w.size > 0 && w.n != w.size {
		return "", fmt.Errorf("archive has %d bytes, the header announced %d", w.n, w.size)
	}
	got := "sha256:" + hex.EncodeToString(w.h.Sum(nil))
	if got != w.digest {
		return "", fmt.Errorf("archive digest mismatch: received %s, header says %s", got, w.digest)
	}
	if err := w.f.Sync(); err != nil {
		return "", fmt.Errorf("source cache: %w", err)
	}
	if err := w.f.Close(); err != nil {
		return "", fmt.Errorf("source cache: %w", err)
	}
	p, _ := w.c.Path(w.digest)
	if err := os.Rename(w.f.Name(), p); err != nil {
		return "", fmt.Errorf("source cache: %w", err)
	}
	return p, nil
}

// Abort drops a partial archive; harmless after Commit.
func (w *Writer) Abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

// ReadFrom is io.ReaderFrom for tests and callers holding a reader.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{w}, r)
}

// Prune keeps the newest keep archives (by modification time) and always keepPath.
func (c *Cache) Prune(keep int, keepPath string) error {
	paths, err := filepath.Glob(filepath.Join(c.dir, "*.tar.gz"))
	if err != nil {
		return err
	}
	type aged struct {
		path string
		mod  int64
	}
	var all []aged
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			all = append(all, aged{p, fi.ModTime().UnixNano()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod > all[j].mod })
	for i, a := range all {
		if i >= keep && a.path != keepPath {
			if err := os.Remove(a.path); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("prune %s: %w", a.path, err)
			}
		}
	}
	return nil
}
