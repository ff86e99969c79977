package archive

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// Unpack extracts the gzip-compressed tar at archivePath into dir, which must exist
// and be empty. It refuses, before writing the entry, anything that could reach
// outside dir or surprise a reader: absolute names, ".." components, entries below a
// symlink, symlinks whose target leaves the tree, hard links, device files, fifos,
// and more than maxBytes of content in total. Writes go through an os.Root, so even a
// bug in these checks cannot write outside dir.
//
// A symlink's target is judged as the kernel would follow it, through every symlink
// on the way: each hop of a chain may stay inside on its own while the chain leaves
// (`a/up -> ..`, then `a/b -> up/..` is the parent of dir). Since a later entry can
// change where an earlier link leads, every link is checked once the whole archive
// is written; on a failure every symlink written is removed again, so nothing in
// dir — the flake directory included — leads outside it.
func Unpack(archivePath, dir string, maxBytes int64) error {
	f, err := os.Open(archivePath)
	if err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("unpack: not a gzip archive: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	defer root.Close()

	u := unpacker{root: root, links: map[string]string{}, left: maxBytes}
	if err := u.all(tar.NewReader(zr)); err != nil {
		u.removeLinks()
		return err
	}
	return nil
}

func (u *unpacker) all(tr *tar.Reader) error {
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("unpack: read tar: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
	names := make([]string, 0, len(u.links))
	for name := range u.links {
		names = append(names, name)
	}
	sort.Strings(names) // the same archive fails on the same link
	for _, name := range names {
		if err := u.followInside(name); err != nil {
			return fmt.Errorf("unpack %q: %w", name, err)
		}
	}
	return nil
}

type unpacker struct {
	root  *os.Root
	links map[string]string // symlinks created so far: cleaned name → target
	left  int64
}

// maxHops is how many symlinks one path may pass through, as Linux allows (ELOOP).
const maxHops = 40

// followInside resolves name the way the kernel would, against the links of the
// archive, and fails if any step goes above the root. Names that do not exist are
// taken lexically, which is stricter than the kernel (it would stop there).
func (u *unpacker) followInside(name string) error {
	var at []string // the directory reached so far, as components below the root
	todo := strings.Split(name, "/")
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(at) == 0 {
				return fmt.Errorf("symlink to %q leads outside the tree through the links it passes", u.links[name])
			}
			at = at[:len(at)-1]
			continue
		}
		next := path.Join(append(append([]string(nil), at...), c)...)
		target, ok := u.links[next]
		if !ok {
			at = append(at, c)
			continue
		}
		if hops++; hops > maxHops {
			return errors.New("too many levels of symbolic links")
		}
		if path.IsAbs(target) {
			return fmt.Errorf("symlink %s to %q leaves the tree", next, target)
		}
		// A relative target is read from the directory holding the link.
		todo = append(strings.Split(target, "/"), todo...)
	}
	return nil
}

// removeLinks removes every symlink written, so a refused tree leads nowhere.
func (u *unpacker) removeLinks() {
	for name := range u.links {
		_ = u.root.Remove(name)
	}
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return nil // the root itself
	}
	for p := path.Dir(name); p != "."; p = path.Dir(p) {
		if _, ok := u.links[p]; ok {
			return errors.New("entry below a symlink")
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.root.MkdirAll(name, 0o755)
	case tar.TypeReg:
		if hdr.Size > u.left {
			return ErrTooLarge
		}
		if err := u.root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if hdr.Mode&0o111 != 0 {
			mode = 0o755
		}
		out, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		n, err := io.Copy(out, io.LimitReader(r, u.left+1))
		u.left -= n
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil && u.left < 0 {
			err = ErrTooLarge
		}
		return err
	case tar.TypeSymlink:
		target := hdr.Linkname
		if target == "" || path.IsAbs(target) {
			return fmt.Errorf("symlink to %q leaves the tree", target)
		}
		if resolved := path.Join(path.Dir(name), target); resolved == ".." || strings.HasPrefix(resolved, "../") {
			return fmt.Errorf("symlink to %q leaves the tree", target)
		}
		if err := u.root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return err
		}
		if err := u.root.Symlink(target, name); err != nil {
			return err
		}
		u.links[name] = target
		return nil
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("entry type %q is not allowed (only files, directories and symlinks inside the tree)", string(hdr.Typeflag))
	}
}

// cleanName refuses absolute names and any ".." component, then cleans the name.
func cleanName(name string) (string, error) {
	if name == "" || path.IsAbs(name) || strings.HasPrefix(name, `\`) {
		return "", errors.New("absolute or empty name")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errors.New(`name contains ".."`)
		}
	}
	return path.Clean(name), nil
}
