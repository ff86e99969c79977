package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/homystack/nio/operator/internal/render"
	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
)

// guideFlake is a host flake that uses the usage guide's additional files the way
// they are meant to be: config/custom.nix (inline) is imported, facts/system-info
// read, and the secret named through the generated nio-secrets.nix — a string, as
// passwordFile takes it.
const guideFlake = `{
  outputs = { self }:
    let
      read = f: builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f);
      custom = import ./config/custom.nix { config = { }; pkgs = { }; };
      passwordFile = (import ./nio-secrets.nix)."secrets/database-password";
    in {
      nixosConfigurations.worker.config.system.build.toplevel = import ./system.nix {
        system = read ./system.txt;
        name = "worker";
        version = read ./version.txt;
        extraInputs = {
          inherit passwordFile;
          postgres = if custom.services.postgresql.enable then "on" else "off";
          facts = builtins.hashString "sha256" (builtins.readFile ./facts/system-info);
        };
      };
    };
}
`

// treeOf reads a directory as the source cache returns a commit's tree.
func treeOf(t *testing.T, dir string) []source.Entry {
	t.Helper()
	var tree []source.Entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		tree = append(tree, source.Entry{Path: filepath.ToSlash(rel), Mode: source.Regular, Content: b})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestAgentSecretFromTheGuideNeverReachesTheNixStore(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)

	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	secret := []byte("guide-db-password-" + hex.EncodeToString(b))
	version := uniqueVersion(t)
	dir := nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: version})
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(guideFlake), 0o644); err != nil {
		t.Fatal(err)
	}
	// The guide's additionalFiles, rendered as the controller renders them.
	files := []render.File{
		{Path: "config/custom.nix", Content: []byte("{ config, pkgs, ... }:\n{\n  services.postgresql.enable = true;\n}\n")},
		{Path: "facts/system-info", Content: []byte(`{"version":1}`)},
	}
	secrets := []render.Secret{{Path: "secrets/database-password", Content: secret}}
	if err := render.CheckSecrets(secrets); err != nil {
		t.Fatal(err)
	}
	arch, err := render.Render(treeOf(t, dir), files, []string{"secrets/database-password"})
	if err != nil {
		t.Fatal(err)
	}
	req := ApplyRequest{
		OperationID: "op-guide", Commit: "c0ffee", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source: Source{Digest: arch.Digest, Size: int64(len(arch.Data)), Open: func() (io.ReadCloser, error) { return io.NopCloser(arch.Reader()), nil }},
		Secrets: &Secrets{Digest: render.SecretsDigest([]byte("k"), secrets), Files: []SecretFile{
			{Path: "secrets/database-password", Data: secret, Mode: render.DefaultSecretMode},
		}},
	}
	res, err := a.Apply(context.Background(), req)
	if err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply: %+v %v", res, err)
	}

	var searched int
	var holding, control []string
	_ = filepath.WalkDir("/nix/store", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		searched++
		c, _ := os.ReadFile(p)
		if bytes.Contains(c, secret) {
			holding = append(holding, p)
		}
		if bytes.Contains(c, []byte(version)) {
			control = append(control, p)
		}
		return nil
	})
	t.Logf("searched %d files of /nix/store", searched)
	if len(control) == 0 {
		t.Fatal("the search did not even find the source's version marker: it proves nothing")
	}
	if len(holding) > 0 {
		t.Fatalf("the secret is in the Nix store: %q", holding)
	}
	// The source the build copied holds the map, the inline file and the facts, no
	// secrets/ directory.
	var src string
	for _, p := range control {
		if strings.HasSuffix(p, "-source/version.txt") {
			src = filepath.Dir(p)
		}
	}
	for _, rel := range []string{"nio-secrets.nix", "config/custom.nix", "facts/system-info"} {
		if _, err := os.Stat(filepath.Join(src, rel)); err != nil {
			t.Errorf("the built source %s lacks %s: %v", src, rel, err)
		}
	}
	if _, err := os.Stat(filepath.Join(src, "secrets")); !os.IsNotExist(err) {
		t.Errorf("the built source has secrets/: %v", err)
	}

	// On the host, outside the store: the agent's --secrets-dir, 0400.
	var runtime string
	for i, arg := range h.args {
		if arg == "--secrets-dir" {
			runtime = h.args[i+1]
		}
	}
	p := filepath.Join(runtime, "current", "secrets", "database-password")
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("%s: %v", p, err)
	}
	if fi, _ := os.Stat(p); fi.Mode() != 0o400 {
		t.Errorf("%s mode %v, want 0400", p, fi.Mode())
	}
}
