// Package render packs the source a host builds: the tree of a commit (without .git)
// plus a configuration's inline and facter additionalFiles, as a deterministic
// tar.gz whose sha256 is the source digest. The same inputs give the same bytes,
// whatever order they come in, so the digest only changes when the content does and
// an agent that already holds a digest need not be sent the source again.
//
// Files from Secrets are never in the archive: the host builds it as a path: flake,
// and Nix copies the whole tree into the world-readable store. The archive gets
// instead, when there are any, the generated SecretsMapFile naming where the host
// keeps each of them (secrets.go); their bytes travel beside the archive.
//
// The archive: entries sorted by path, every parent directory emitted before its
// contents, mtime 0, uid/gid 0 with empty owner names, modes 0755 for directories
// and executables, 0644 for files, symlinks as symlinks.
// The bytes depend on the Go release's compress/flate too, so a digest is stable for
// one build of the operator, not necessarily across Go upgrades.
package render

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/homystack/nio/operator/internal/source"
)

// ErrInvalidPath is returned for a path that is absolute, not clean, climbs with
// "..", lies under .git, holds NUL or a backslash, collides with another entry, or
// for a symlink whose target leaves the tree.
var ErrInvalidPath = errors.New("invalid path")

// File is one additional file that belongs in the source (inline or facter: not
// secret).
type File struct {
	// Path is relative to the repository root, slash-separated.
	Path    string
	Content []byte
}

// Archive is a rendered source.
type Archive struct {
	// Data is the tar.gz.
	Data []byte
	// Digest is "sha256:<hex>" of Data.
	Digest string
}

// Reader returns a fresh reader over the archive; each call starts at the beginning.
func (a Archive) Reader() io.Reader { return bytes.NewReader(a.Data) }

const (
	modeDir     = 0o755
	modeFile    = 0o644
	modeExec    = 0o755
	modeSymlink = 0o777
)

// epoch is every entry's mtime: nothing in the archive may depend on when it was made.
var epoch = time.Unix(0, 0).UTC()

type entry struct {
	path    string
	mode    source.Mode
	content []byte
}

// Render packs tree plus files, plus SecretsMapFile when secretPaths (the paths of
// the configuration's files from Secrets) is not empty. An additional file with the
// path of a tracked file replaces it (the configuration says what the host gets).
// Two additional files with one path, or a path that is a directory on one side and
// a file or symlink on the other, are refused with ErrInvalidPath; a secret path
// that names a tracked or additional file or directory, or a source that has its
// own SecretsMapFile, with ErrSecretConflict. Only the secrets' paths are taken:
// the archive cannot depend on their contents.
func Render(tree []source.Entry, files []File, secretPaths []string) (Archive, error) {
	entries := map[string]entry{}
	for _, e := range tree {
		if err := validPath(e.Path); err != nil {
			return Archive{}, fmt.Errorf("tree entry: %w", err)
		}
		if _, dup := entries[e.Path]; dup {
			return Archive{}, fmt.Errorf("tree entry %q twice: %w", e.Path, ErrInvalidPath)
		}
		entries[e.Path] = entry{path: e.Path, mode: e.Mode, content: e.Content}
	}
	seen := map[string]bool{}
	for _, f := range files {
		if err := validPath(f.Path); err != nil {
			return Archive{}, fmt.Errorf("additional file: %w", err)
		}
		if seen[f.Path] {
			return Archive{}, fmt.Errorf("additional file %q given twice: %w", f.Path, ErrInvalidPath)
		}
		seen[f.Path] = true
		entries[f.Path] = entry{path: f.Path, mode: source.Regular, content: f.Content}
	}
	if len(secretPaths) > 0 {
		mapping, err := secretsMap(entries, secretPaths)
		if err != nil {
			return Archive{}, err
		}
		entries[SecretsMapFile] = entry{path: SecretsMapFile, mode: source.Regular, content: mapping}
	}

	dirs, err := directories(entries)
	if err != nil {
		return Archive{}, err
	}
	for _, e := range entries {
		if e.mode == source.Symlink {
			if err := checkSymlink(e.path, string(e.content), entries); err != nil {
				return Archive{}, err
			}
		}
	}

	names := make([]string, 0, len(entries)+len(dirs))
	for p := range entries {
		names = append(names, p)
	}
	for d := range dirs {
		names = append(names, d)
	}
	// A parent is a prefix of its children, so plain byte order emits it first.
	sort.Strings(names)

	var buf bytes.Buffer
	gz, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return Archive{}, err
	}
	// gzip.Writer leaves Name empty and ModTime zero (written as 0) unless told.
	tw := tar.NewWriter(gz)
	for _, name := range names {
		if err := writeEntry(tw, name, dirs[name], entries[name]); err != nil {
			return Archive{}, fmt.Errorf("pack %s: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return Archive{}, err
	}
	if err := gz.Close(); err != nil {
		return Archive{}, err
	}
	sum := sha256.Sum256(buf.Bytes())
	return Archive{Data: buf.Bytes(), Digest: "sha256:" + hex.EncodeToString(sum[:])}, nil
}

func writeEntry(tw *tar.Writer, name string, isDir bool, e entry) error {
	hdr := &tar.Header{Name: name, ModTime: epoch}
	switch {
	case isDir:
		hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, name+"/", modeDir
	case e.mode == source.Symlink:
		hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, string(e.content), modeSymlink
	default:
		hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, int64(len(e.content)), modeFile
		if e.mode == source.Executable {
			hdr.Mode = modeExec
		}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeReg {
		_, err := tw.Write(e.content)
		return err
	}
	return nil
}

// directories returns every parent directory of the entries, refusing a path that
// is a file or symlink and also a parent of another entry (an additional file under
// a symlinked directory would otherwise be written through the link on unpack).
func directories(entries map[string]entry) (map[string]bool, error) {
	dirs := map[string]bool{}
	for p := range entries {
		for d := parent(p); d != ""; d = parent(d) {
			if _, isEntry := entries[d]; isEntry {
				return nil, fmt.Errorf("%q is a file or symlink and also the directory of %q: %w", d, p, ErrInvalidPath)
			}
			dirs[d] = true
		}
	}
	return dirs, nil
}

func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// validPath re-checks what the API server's validation already promises: relative,
// clean, no "..", nothing under .git, no NUL or backslash.
func validPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty path: %w", ErrInvalidPath)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("%q is absolute: %w", p, ErrInvalidPath)
	case strings.ContainsAny(p, "\x00\\"):
		return fmt.Errorf("%q holds NUL or a backslash: %w", p, ErrInvalidPath)
	}
	for _, part := range strings.Split(p, "/") {
		switch {
		case part == "" || part == ".":
			return fmt.Errorf("%q is not clean: %w", p, ErrInvalidPath)
		case part == "..":
			return fmt.Errorf("%q climbs with '..': %w", p, ErrInvalidPath)
		case strings.EqualFold(part, ".git"):
			return fmt.Errorf("%q is under .git: %w", p, ErrInvalidPath)
		}
	}
	return nil
}

// maxLinkHops bounds symlink resolution, as the kernel's ELOOP does.
const maxLinkHops = 40

// checkSymlink resolves the symlink at link as the kernel would once the archive is
// unpacked, following other symlinks of the archive, and refuses it if any step
// leaves the tree. A lexical check is not enough: with `s -> .`, `e -> s/..`
// climbs out although "s/.." cleans to ".".
func checkSymlink(link, target string, entries map[string]entry) error {
	refuse := func(why string) error {
		return fmt.Errorf("symlink %q -> %q %s: %w", link, target, why, ErrInvalidPath)
	}
	if target == "" || strings.HasPrefix(target, "/") {
		return refuse("is empty or absolute")
	}
	if strings.ContainsRune(target, 0) {
		return refuse("holds NUL")
	}
	// stack holds the resolved directory components; todo the components left.
	var stack []string
	if d := parent(link); d != "" {
		stack = strings.Split(d, "/")
	}
	todo := strings.Split(target, "/")
	hops := 0
	for len(todo) > 0 {
		part := todo[0]
		todo = todo[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return refuse("leaves the tree")
			}
			stack = stack[:len(stack)-1]
			continue
		}
		cur := strings.Join(append(stack, part), "/")
		if e, ok := entries[cur]; ok && e.mode == source.Symlink {
			if hops++; hops > maxLinkHops {
				return refuse("loops")
			}
			next := string(e.content)
			if strings.HasPrefix(next, "/") {
				return refuse("goes through an absolute symlink")
			}
			// Continue from the linked symlink's directory with its target first.
			todo = append(strings.Split(next, "/"), todo...)
			continue
		}
		stack = append(stack, part)
	}
	return nil
}
