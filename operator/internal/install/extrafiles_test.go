package install

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func sampleExtraFiles(t *testing.T) ExtraFiles {
	t.Helper()
	hk, err := GenerateHostKey("root@worker-1")
	if err != nil {
		t.Fatal(err)
	}
	return ExtraFiles{
		AgentTLS: AgentTLS{CA: []byte("ca pem\n"), Cert: []byte("cert pem\n"), Key: []byte("key pem\n")},
		HostKey:  hk,
		Marker: Marker{
			Machine: "worker-1", Namespace: "default", Configuration: "worker-1-config",
			Commit: "0123456789abcdef0123456789abcdef01234567",
			Time:   time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC),
		},
	}
}

// listTree renders a tree as "<mode> <path>" lines in walk order, plus the marker's
// content, for the golden file.
func listTree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(&b, "%s %s\n", info.Mode(), filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	marker, err := os.ReadFile(filepath.Join(root, "var/lib/nio/installed"))
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString("== var/lib/nio/installed\n")
	b.Write(marker)
	return b.String()
}

func TestExtraFilesTreeGolden(t *testing.T) {
	f := sampleExtraFiles(t)
	root := filepath.Join(t.TempDir(), "extra")
	if err := f.Write(root); err != nil {
		t.Fatal(err)
	}
	golden(t, "extra-files", listTree(t, root))

	// Contents the golden file leaves out because they are random or opaque.
	for rel, want := range map[string]string{
		"var/lib/nio-agent/tls/ca.crt":  "ca pem\n",
		"var/lib/nio-agent/tls/tls.crt": "cert pem\n",
		"var/lib/nio-agent/tls/tls.key": "key pem\n",
		"etc/ssh/ssh_host_ed25519_key":  string(f.HostKey.PrivatePEM),
	} {
		got, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil || string(got) != want {
			t.Errorf("%s: content %q (err %v), want %q", rel, got, err, want)
		}
	}
	var m map[string]any
	raw, _ := os.ReadFile(filepath.Join(root, "var/lib/nio/installed"))
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("marker is not JSON: %v", err)
	}
	for _, k := range []string{"machine", "namespace", "commit", "time"} {
		if _, ok := m[k]; !ok {
			t.Errorf("marker lacks %q: %s", k, raw)
		}
	}
}

// The host key is what sshd on the installed system loads, and what the operator pins.
func TestGeneratedHostKeyIsOpenSSHAndMatchesItsPin(t *testing.T) {
	hk, err := GenerateHostKey("root@worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(hk.PrivatePEM), "-----BEGIN OPENSSH PRIVATE KEY-----\n") {
		t.Errorf("private key is not in OpenSSH format:\n%s", hk.PrivatePEM)
	}
	priv, err := ssh.ParseRawPrivateKey(hk.PrivatePEM)
	if err != nil {
		t.Fatal(err)
	}
	edPriv, ok := priv.(*ed25519.PrivateKey)
	if !ok {
		t.Fatalf("key type %T, want ed25519", priv)
	}
	signer, err := ssh.NewSignerFromKey(*edPriv)
	if err != nil {
		t.Fatal(err)
	}
	pinned, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(hk.AuthorizedKey))
	if err != nil || len(rest) != 0 {
		t.Fatalf("AuthorizedKey %q: %v", hk.AuthorizedKey, err)
	}
	if string(pinned.Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Error("AuthorizedKey is not the private key's public half")
	}
	if !strings.HasPrefix(hk.AuthorizedKey, "ssh-ed25519 ") || strings.ContainsAny(hk.AuthorizedKey, "\n") {
		t.Errorf("AuthorizedKey %q is not one ssh-ed25519 line", hk.AuthorizedKey)
	}
	other, err := GenerateHostKey("root@worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if other.AuthorizedKey == hk.AuthorizedKey {
		t.Error("two generated host keys are equal")
	}
}

func TestExtraFilesRefuseMissingParts(t *testing.T) {
	for name, edit := range map[string]func(*ExtraFiles){
		"no TLS key":   func(f *ExtraFiles) { f.AgentTLS.Key = nil },
		"no CA":        func(f *ExtraFiles) { f.AgentTLS.CA = nil },
		"no host key":  func(f *ExtraFiles) { f.HostKey = HostKey{} },
		"no machine":   func(f *ExtraFiles) { f.Marker.Machine = "" },
		"no namespace": func(f *ExtraFiles) { f.Marker.Namespace = "" },
	} {
		f := sampleExtraFiles(t)
		edit(&f)
		root := filepath.Join(t.TempDir(), "extra")
		if err := f.Write(root); err == nil {
			t.Errorf("%s: Write succeeded", name)
		}
		if _, err := os.Stat(root); err == nil {
			t.Errorf("%s: a partial tree was left at %s", name, root)
		}
	}
}
