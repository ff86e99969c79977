package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type tarEntry struct {
	name, body, link string
	typ              byte
}

func writeArchive(t *testing.T, dir string, entries ...tarEntry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	zw.Close()
	p := filepath.Join(dir, "src.tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnpackRefusesEntriesThatLeaveTheTree(t *testing.T) {
	ok := tarEntry{name: "flake.nix", body: "{}", typ: tar.TypeReg}
	cases := map[string][]tarEntry{
		"dot-dot":            {ok, {name: "../x", body: "x", typ: tar.TypeReg}},
		"nested dot-dot":     {ok, {name: "a/../../x", body: "x", typ: tar.TypeReg}},
		"absolute":           {ok, {name: "@BASE@/x", body: "x", typ: tar.TypeReg}},
		"symlink out":        {ok, {name: "l", link: "../", typ: tar.TypeSymlink}},
		"absolute symlink":   {ok, {name: "l", link: "@BASE@", typ: tar.TypeSymlink}},
		"write through link": {ok, {name: "sub/", typ: tar.TypeDir}, {name: "l", link: "sub", typ: tar.TypeSymlink}, {name: "l/x", body: "x", typ: tar.TypeReg}},
		"link below link":    {ok, {name: "l", link: ".", typ: tar.TypeSymlink}, {name: "l/m", link: "..", typ: tar.TypeSymlink}},
		// Each hop alone stays inside; followed through a/up (the root), a/b is its parent.
		"symlink chain out": {ok, {name: "a/", typ: tar.TypeDir}, {name: "a/up", link: "..", typ: tar.TypeSymlink},
			{name: "a/b", link: "up/..", typ: tar.TypeSymlink}},
		// The link that makes l1 escape comes after it in the archive.
		"chain through a later link": {ok, {name: "l1", link: "l2/..", typ: tar.TypeSymlink}, {name: "d/", typ: tar.TypeDir},
			{name: "l2", link: "d/..", typ: tar.TypeSymlink}},
		// The flake directory the operation names (hosts) is a chain leading out.
		"flake dir chain out": {ok, {name: "sub/", typ: tar.TypeDir}, {name: "sub/up", link: "..", typ: tar.TypeSymlink},
			{name: "hosts", link: "sub/up/..", typ: tar.TypeSymlink}, {name: "sub/flake.nix", body: "{}", typ: tar.TypeReg}},
		"symlink loop":         {ok, {name: "a", link: "b", typ: tar.TypeSymlink}, {name: "b", link: "a", typ: tar.TypeSymlink}},
		"hard link":            {ok, {name: "h", link: "flake.nix", typ: tar.TypeLink}},
		"char device":          {ok, {name: "dev", typ: tar.TypeChar}},
		"fifo":                 {ok, {name: "fifo", typ: tar.TypeFifo}},
		"oversize":             {ok, {name: "big", body: strings.Repeat("x", 2048), typ: tar.TypeReg}},
		"duplicate overwrites": {ok, {name: "flake.nix", body: "evil", typ: tar.TypeReg}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			for i := range entries {
				entries[i].name = strings.ReplaceAll(entries[i].name, "@BASE@", base)
				entries[i].link = strings.ReplaceAll(entries[i].link, "@BASE@", base)
			}
			arch := writeArchive(t, t.TempDir(), entries...)
			dest := filepath.Join(base, "dest")
			if err := os.Mkdir(dest, 0o700); err != nil {
				t.Fatal(err)
			}
			err := Unpack(arch, dest, 1024)
			if err == nil {
				t.Fatal("unpacked")
			}
			if name == "oversize" && !errors.Is(err, ErrTooLarge) {
				t.Errorf("err = %v, want ErrTooLarge", err)
			}
			got, _ := os.ReadDir(base)
			if len(got) != 1 || got[0].Name() != "dest" {
				t.Errorf("written outside the destination: %v", got)
			}
			// A refused tree keeps no symlink (a caller ignoring the error, or building
			// the flake dir anyway, would follow it).
			filepath.WalkDir(dest, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.Type()&os.ModeSymlink != 0 {
					t.Errorf("symlink %s left in a refused tree", p)
				}
				return nil
			})
		})
	}
}

func TestUnpackWritesFilesDirsAndInsideLinks(t *testing.T) {
	arch := writeArchive(t, t.TempDir(),
		tarEntry{name: "flake.nix", body: "{ }", typ: tar.TypeReg},
		tarEntry{name: "hosts/", typ: tar.TypeDir},
		tarEntry{name: "hosts/a.nix", body: "a", typ: tar.TypeReg},
		tarEntry{name: "hosts/current", link: "a.nix", typ: tar.TypeSymlink},
		// Chains that stay inside are fine, .. through a link included.
		tarEntry{name: "machines", link: "hosts", typ: tar.TypeSymlink},
		tarEntry{name: "all", link: "machines", typ: tar.TypeSymlink},
		tarEntry{name: "top", link: "all/../flake.nix", typ: tar.TypeSymlink},
		tarEntry{name: "cur", link: "all/current", typ: tar.TypeSymlink},
	)
	dest := t.TempDir()
	if err := Unpack(arch, dest, 1024); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"hosts/current": "a", "top": "{ }", "cur": "a"} {
		b, err := os.ReadFile(filepath.Join(dest, filepath.FromSlash(name)))
		if err != nil || string(b) != want {
			t.Fatalf("%s = %q (%v), want %q", name, b, err, want)
		}
	}
}

func TestCacheCommitVerifiesDigestAndSize(t *testing.T) {
	c, err := NewCache(t.TempDir(), 100)
	if err != nil {
		t.Fatal(err)
	}
	const good = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" // "hello"
	if _, err := c.Create(good, 101); !errors.Is(err, ErrTooLarge) {
		t.Errorf("announced oversize: %v", err)
	}
	w, _ := c.Create(good, 5)
	w.Write([]byte("hellO"))
	if _, err := w.Commit(); err == nil || !strings.Contains(err.Error(), "mismatch") {
		t.Errorf("wrong bytes committed: %v", err)
	}
	if _, ok := c.Path(good); ok {
		t.Fatal("a mismatching archive is in the cache")
	}
	w, _ = c.Create(good, 5)
	w.Write([]byte("hello"))
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Path(good); !ok {
		t.Fatal("verified archive not cached")
	}
}
