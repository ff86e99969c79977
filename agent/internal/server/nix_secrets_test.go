package server

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/testkit/nixtest"
)

// secretsFlake is the basic fixture's system, configured the way the usage guide's
// additionalFiles are meant to be used: it names its secret through the generated
// nio-secrets.nix (a string, as passwordFile takes it) and so depends on where the
// secret is, never on what it is.
const secretsFlake = `{
  outputs = { self }:
    let
      read = f: builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f);
      passwordFile = (import ./nio-secrets.nix)."secrets/database-password";
    in {
      nixosConfigurations.worker.config.system.build.toplevel = import ./system.nix {
        system = read ./system.txt;
        name = "worker";
        version = read ./version.txt;
        extraInputs = { inherit passwordFile; };
      };
    };
}
`

// secretsMap is what the operator renders for the guide's secret
// (operator/internal/render, TestSecretsMapIsDeterministicAndNamesTheRuntimeLocation).
const secretsMap = `{
  "secrets/database-password" = "/run/nio-secrets/current/secrets/database-password";
}
`

// storeHolding returns the files under /nix/store whose content holds needle.
func storeHolding(t *testing.T, needle []byte) (found []string, files int) {
	t.Helper()
	err := filepath.WalkDir("/nix/store", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a path being added or collected meanwhile
		}
		if !d.Type().IsRegular() {
			return nil
		}
		files++
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, needle) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found, files
}

func TestRealNixSecretNeverReachesTheStore(t *testing.T) {
	h := startNixHost(t)
	// Unique per run, so no earlier run left it anywhere.
	stamp := fmt.Sprintf("%d", time.Now().UnixNano())
	secret := []byte("db-pw-" + stamp + "-must-not-be-in-the-store")
	version := "secrets-" + stamp

	dir := nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: version})
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(secretsFlake), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nio-secrets.nix"), []byte(secretsMap), 0o644); err != nil {
		t.Fatal(err)
	}
	arch := archiveDir(t, dir)
	files := []*agentv1.SecretFile{{Path: "secrets/database-password", Data: secret}}
	run := applyWithSecrets(t, h.client, flakeHeader("op-secret", agentv1.Action_ACTION_SWITCH, arch), files, arch, nil)
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_SUCCEEDED)
	if h.current(t) != r.GetStorePath() {
		t.Fatalf("current %s, want %s", h.current(t), r.GetStorePath())
	}

	// The control: the search finds what the build did copy — the source's own
	// version marker (in the flake's -source path and the system).
	marker, n := storeHolding(t, []byte(version))
	if len(marker) == 0 || n == 0 {
		t.Fatalf("the store search finds nothing it should (%d files searched): it cannot be trusted", n)
	}
	var source string
	for _, p := range marker {
		if strings.HasSuffix(p, "/version.txt") {
			source = filepath.Dir(p)
		}
	}
	if source == "" {
		t.Fatalf("no -source copy of the flake among %q", marker)
	}
	if _, err := os.Stat(filepath.Join(source, "nio-secrets.nix")); err != nil {
		t.Errorf("the source in the store lacks nio-secrets.nix: %v", err)
	}
	if _, err := os.Stat(filepath.Join(source, "secrets")); !os.IsNotExist(err) {
		t.Errorf("the source in the store has secrets/: %v", err)
	}
	// The system's derivation names the runtime location, as a NixOS unit would.
	named, _ := storeHolding(t, []byte("/run/nio-secrets/current/secrets/database-password"))
	var drv bool
	for _, p := range named {
		drv = drv || strings.HasSuffix(p, "-nixos-system-worker-"+version+".drv")
	}
	if !drv {
		t.Errorf("the system's derivation does not name the secret's runtime path: %q", named)
	}

	found, n := storeHolding(t, secret)
	t.Logf("searched %d files in /nix/store for the secret", n)
	if len(found) > 0 {
		t.Fatalf("the secret is in the Nix store: %q", found)
	}
	for _, where := range []string{h.env.StateDir(), filepath.Dir(h.profile)} {
		grepTree(t, where, secret)
	}

	// Where it is instead: tmpfs-style runtime dir, root-only.
	stateDir := filepath.Join(filepath.Dir(filepath.Dir(h.profile)), "state")
	grepTree(t, stateDir, secret)
	p := filepath.Join(stateDir+"-secrets", "current", "secrets", "database-password")
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("%s: %q %v", p, got, err)
	}
	if fi, _ := os.Stat(p); fi.Mode() != 0o400 {
		t.Errorf("%s mode %v, want 0400", p, fi.Mode())
	}
}
