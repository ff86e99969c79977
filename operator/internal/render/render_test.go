package render

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/testkit/gittest"
)

// fixtureTree commits a small flake repository with an executable, a symlink and a
// nested directory to a git http-backend with bearer auth, and reads it back
// through the source cache, as the controller does.
func fixtureTree(t *testing.T) []source.Entry {
	t.Helper()
	srv := gittest.NewServer(t, gittest.Options{Auth: gittest.AuthBearer, Token: "render-token"})
	src := t.TempDir()
	write(t, filepath.Join(src, "flake.nix"), "{ outputs = { self }: { }; }\n", 0o644)
	write(t, filepath.Join(src, "hosts", "web", "default.nix"), "{ }\n", 0o644)
	write(t, filepath.Join(src, "scripts", "deploy.sh"), "#!/bin/sh\necho hi\n", 0o755)
	if err := os.Symlink("hosts/web/default.nix", filepath.Join(src, "web.nix")); err != nil {
		t.Fatal(err)
	}
	repo := srv.NewRepo(t, "fleet")
	commit := repo.CommitDir(t, src, "fixture")

	cache, err := source.NewCache(source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := source.ParseCredentials(map[string][]byte{"bearerToken": []byte("render-token")})
	if err != nil {
		t.Fatal(err)
	}
	r, err := cache.Repo(repo.URL(), creds)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got, err := r.Resolve(ctx, "main"); err != nil || got != commit {
		t.Fatalf("Resolve = %s, %v; want %s", got, err, commit)
	}
	tree, err := r.Tree(ctx, commit)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

var additional = []File{
	{Path: "config/custom.nix", Content: []byte("{ }\n")},
	{Path: "facter.json", Content: []byte(`{"version":1}`)},
}

func TestRenderingTwiceGivesTheSameBytesAndDigest(t *testing.T) {
	tree := fixtureTree(t)
	a, err := Render(tree, additional, nil)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	// A second fetch of the same commit, with the inputs in another order.
	again := fixtureTree(t)
	slices.Reverse(again)
	files := slices.Clone(additional)
	slices.Reverse(files)
	b, err := Render(again, files, nil)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	if !bytes.Equal(a.Data, b.Data) || a.Digest != b.Digest {
		t.Fatalf("two renders differ: %s vs %s", a.Digest, b.Digest)
	}
	sum := sha256.Sum256(a.Data)
	if a.Digest != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Fatalf("digest %s is not the sha256 of the data", a.Digest)
	}
	if rd, _ := io.ReadAll(a.Reader()); !bytes.Equal(rd, a.Data) {
		t.Fatalf("Reader does not return the data")
	}

	changed := slices.Clone(additional)
	changed[0] = File{Path: "config/custom.nix", Content: []byte("{ x = 1; }\n")}
	c, err := Render(tree, changed, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Digest == a.Digest {
		t.Fatalf("changed additional file content kept the digest")
	}
}

type tarEntry struct {
	hdr     tar.Header
	content string
}

func readArchive(t *testing.T, data []byte) []tarEntry {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if gz.Name != "" || !gz.ModTime.IsZero() {
		t.Fatalf("gzip header carries name %q / time %v", gz.Name, gz.ModTime)
	}
	tr := tar.NewReader(gz)
	var out []tarEntry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{hdr: *hdr, content: string(body)})
	}
}

func TestArchiveHasFixedOwnersTimesAndModes(t *testing.T) {
	a, err := Render(fixtureTree(t), additional, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries := readArchive(t, a.Data)
	want := map[string]struct {
		typ  byte
		mode int64
	}{
		"config/":               {tar.TypeDir, 0o755},
		"config/custom.nix":     {tar.TypeReg, 0o644},
		"facter.json":           {tar.TypeReg, 0o644},
		"flake.nix":             {tar.TypeReg, 0o644},
		"hosts/":                {tar.TypeDir, 0o755},
		"hosts/web/":            {tar.TypeDir, 0o755},
		"hosts/web/default.nix": {tar.TypeReg, 0o644},
		"scripts/":              {tar.TypeDir, 0o755},
		"scripts/deploy.sh":     {tar.TypeReg, 0o755},
		"web.nix":               {tar.TypeSymlink, 0o777},
	}
	var names []string
	for _, e := range entries {
		h := e.hdr
		names = append(names, h.Name)
		w, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected entry %q", h.Name)
			continue
		}
		if h.Typeflag != w.typ || h.Mode != w.mode {
			t.Errorf("%s: type %c mode %o, want %c %o", h.Name, h.Typeflag, h.Mode, w.typ, w.mode)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d/%d %q/%q mtime %v", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
		if strings.Contains(h.Name, ".git") {
			t.Errorf("archive holds %s", h.Name)
		}
	}
	if len(names) != len(want) {
		t.Fatalf("entries %v", names)
	}
	if !slices.IsSorted(names) {
		t.Fatalf("entries not sorted: %v", names)
	}
	for _, e := range entries {
		switch e.hdr.Name {
		case "config/custom.nix":
			if e.content != "{ }\n" {
				t.Fatalf("additional file content %q", e.content)
			}
		case "web.nix":
			if e.hdr.Linkname != "hosts/web/default.nix" {
				t.Fatalf("symlink target %q", e.hdr.Linkname)
			}
		}
	}
}

func TestArchiveUnpacksWithTarToTheSameTree(t *testing.T) {
	a, err := Render(fixtureTree(t), additional, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("tar", "-xzf", "-", "-C", dir, "--no-same-owner", "--preserve-permissions")
	cmd.Stdin = a.Reader()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	for path, mode := range map[string]os.FileMode{
		"config/custom.nix": 0o644, "scripts/deploy.sh": 0o755, "flake.nix": 0o644, "hosts/web": 0o755 | os.ModeDir,
	} {
		fi, err := os.Lstat(filepath.Join(dir, path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), mode)
		}
	}
	if content, err := os.ReadFile(filepath.Join(dir, "web.nix")); err != nil || string(content) != "{ }\n" {
		t.Fatalf("symlink does not resolve inside the tree: %q %v", content, err)
	}
}

func TestAdditionalFileReplacesTrackedFile(t *testing.T) {
	tree := []source.Entry{{Path: "hosts/a.nix", Content: []byte("tracked"), Mode: source.Executable}}
	a, err := Render(tree, []File{{Path: "hosts/a.nix", Content: []byte("override")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	entries := readArchive(t, a.Data)
	if len(entries) != 2 || entries[1].content != "override" || entries[1].hdr.Mode != 0o644 {
		t.Fatalf("entries %+v", entries)
	}
}

func TestInvalidPathsAreRefused(t *testing.T) {
	for _, p := range []string{
		"", "/etc/passwd", "a/../b", "..", "../x", "./a", "a/./b", "a//b", "a/",
		".git", ".git/config", "sub/.git/hooks/x", ".GIT/config", `a\b`, "a\x00b",
	} {
		_, err := Render(nil, []File{{Path: p, Content: []byte("x")}}, nil)
		if !errors.Is(err, ErrInvalidPath) {
			t.Errorf("additional file %q: %v, want ErrInvalidPath", p, err)
		}
		_, err = Render([]source.Entry{{Path: p, Content: []byte("x")}}, nil, nil)
		if !errors.Is(err, ErrInvalidPath) {
			t.Errorf("tree entry %q: %v, want ErrInvalidPath", p, err)
		}
	}
	if _, err := Render(nil, []File{{Path: "a"}, {Path: "a"}}, nil); !errors.Is(err, ErrInvalidPath) {
		t.Errorf("duplicate additional file: %v", err)
	}
}

func TestSymlinksLeavingTheTreeAreRefused(t *testing.T) {
	link := func(path, target string) source.Entry {
		return source.Entry{Path: path, Mode: source.Symlink, Content: []byte(target)}
	}
	file := source.Entry{Path: "hosts/a.nix", Content: []byte("a")}
	for name, tree := range map[string][]source.Entry{
		"parent":            {link("l", "../outside")},
		"deep parent":       {file, link("hosts/l", "../../etc/passwd")},
		"absolute":          {link("l", "/etc/passwd")},
		"through self link": {link("s", "."), link("e", "s/..")},
		"loop":              {link("x", "y"), link("y", "x")},
	} {
		if _, err := Render(tree, nil, nil); !errors.Is(err, ErrInvalidPath) {
			t.Errorf("%s: %v, want ErrInvalidPath", name, err)
		}
	}
	for name, tree := range map[string][]source.Entry{
		"sibling":    {file, link("hosts/b.nix", "a.nix")},
		"up and in":  {file, link("other/l", "../hosts/a.nix")},
		"dangling":   {link("l", "missing/file")},
		"link chain": {file, link("h", "hosts"), link("l", "h/a.nix")},
	} {
		if _, err := Render(tree, nil, nil); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
}

func TestFileAndDirectoryCollisionsAreRefused(t *testing.T) {
	tree := []source.Entry{
		{Path: "hosts/a.nix", Content: []byte("a")},
		{Path: "link", Mode: source.Symlink, Content: []byte("hosts")},
	}
	for _, f := range []File{{Path: "hosts"}, {Path: "link/x.nix"}, {Path: "hosts/a.nix/x"}} {
		if _, err := Render(tree, []File{f}, nil); !errors.Is(err, ErrInvalidPath) {
			t.Errorf("additional %q: %v, want ErrInvalidPath", f.Path, err)
		}
	}
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
