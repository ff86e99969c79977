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
	"strings"
)

// Unpack extracts the gzip-compressed tar at archivePath into dir, which must exist
// and be empty. It refuses, before writing the entry, anything that could reach
// outside dir or surprise a reader: absolute names, ".." components, entries below a
// symlink, symlinks whose target leaves the tree, hard links, device files, fifos,
// and more than maxBytes of content in total. Writes go through an os.Root, so even a
// bug in these checks cannot write outside dir.
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

	u := unpacker{root: root, links: map[string]bool{}, left: maxBytes}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unpack: read tar: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
}

type unpacker struct {
	root  *os.Root
	links map[string]bool // symlinks created so far, by cleaned name
	left  int64
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
		if u.links[p] {
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
		u.links[name] = true
		return u.root.Symlink(target, name)
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
