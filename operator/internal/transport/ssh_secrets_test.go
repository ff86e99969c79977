package transport

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/homystack/nio/testkit/sshtest"
)

// secretsRebuild is a stand-in nixos-rebuild that records what current/db/password
// held when it ran (what the new system's services would read), then succeeds or
// fails.
func (h *sshHost) secretsRebuild(t *testing.T, secretsDir string, fail bool) {
	t.Helper()
	exit := "0"
	if fail {
		exit = "1"
	}
	h.WriteStandIn(t, "nixos-rebuild", `#!/bin/sh
{ cat `+secretsDir+`/current/db/password 2>/dev/null || echo -; echo; } >> `+h.record+`
exit `+exit+`
`)
}

func TestSSHDeliversSecretsOutsideTheSourceAndRestoresThemOnFailure(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	secretsDir := filepath.Join(h.Dir, "run", "nio-secrets")
	tr := h.transport(t, func(c *SSHConfig) { c.SecretsDir = secretsDir })
	req := func(id, pw string) ApplyRequest {
		return ApplyRequest{
			OperationID: id, Action: ActionSwitch, Target: Target{FlakeDir: ".", FlakeAttr: "web"},
			Source: testSource(t, map[string]string{"flake.nix": "{}\n", "nio-secrets.nix": "{ }\n"}),
			Secrets: &Secrets{Digest: "d-" + id, Files: []SecretFile{
				{Path: "db/password", Data: []byte(pw)},
				{Path: "tls/key.pem", Data: []byte("key-" + pw), Mode: 0o440, Owner: "65534", Group: "nogroup"},
			}},
		}
	}
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(secretsDir, "current", rel))
		if err != nil {
			return "-"
		}
		return string(b)
	}

	h.secretsRebuild(t, secretsDir, false)
	res, err := tr.Apply(context.Background(), req("op-s1", "pw-ssh-one"))
	if err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply: %+v %v", res, err)
	}
	for rel, want := range map[string]os.FileMode{"db/password": 0o400, "tls/key.pem": 0o440} {
		fi, err := os.Stat(filepath.Join(secretsDir, "current", rel))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", rel, fi, err, want)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); rel == "tls/key.pem" && st.Uid != 65534 {
			t.Errorf("%s: uid %d, want 65534", rel, st.Uid)
		}
	}
	// Nothing of the secret in the uploaded source's place, nor anywhere else than
	// the secrets dir.
	_ = filepath.WalkDir(h.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.HasPrefix(p, secretsDir+"/") || p == h.record {
			return nil
		}
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("pw-ssh-one")) {
			t.Errorf("%s holds the secret", p)
		}
		return nil
	})

	// A failing rebuild: the new set was current while it ran, the old one is
	// current again after, and the new one is gone.
	h.secretsRebuild(t, secretsDir, true)
	res, err = tr.Apply(context.Background(), req("op-s2", "pw-ssh-two"))
	if err != nil || res.Outcome != OutcomeFailed {
		t.Fatalf("failing Apply: %+v %v", res, err)
	}
	if read("db/password") != "pw-ssh-one" || read("tls/key.pem") != "key-pw-ssh-one" {
		t.Errorf("after the failure current holds %q", read("db/password"))
	}
	rec, _ := os.ReadFile(h.record)
	if string(rec) != "pw-ssh-one\npw-ssh-two\n" {
		t.Errorf("nixos-rebuild saw the secrets %q, want the new set each time", rec)
	}
	sets, _ := os.ReadDir(filepath.Join(secretsDir, "sets"))
	if len(sets) != 1 {
		t.Errorf("sets left: %v", sets)
	}
	top, _ := os.ReadDir(secretsDir)
	for _, e := range top {
		if e.Name() != "sets" && e.Name() != "current" {
			t.Errorf("left in the secrets dir: %s", e.Name())
		}
	}

	// An empty set removes them.
	h.secretsRebuild(t, secretsDir, false)
	empty := req("op-s3", "")
	empty.Secrets = &Secrets{}
	if res, err := tr.Apply(context.Background(), empty); err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("empty set: %+v %v", res, err)
	}
	if _, err := os.Lstat(filepath.Join(secretsDir, "current")); !os.IsNotExist(err) {
		t.Errorf("current after an empty set: %v", err)
	}
}
