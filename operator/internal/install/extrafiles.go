package install

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Paths on the installed system. nixos-anywhere copies the extra-files tree to the
// new root, so these are also the paths inside that tree (without the leading /).
const (
	// AgentTLSDir is nio-agent's default --tls-dir: ca.crt, tls.crt, tls.key.
	AgentTLSDir = "/var/lib/nio-agent/tls"
	// HostKeyPath is the SSH host key NixOS's sshd uses (services.openssh.hostKeys
	// default); an existing key is kept, not regenerated.
	HostKeyPath = "/etc/ssh/ssh_host_ed25519_key"
	// MarkerPath marks a host installed by NIO. A host that has it is never wiped
	// again without the reinstall annotation: the install is once-only.
	MarkerPath = "/var/lib/nio/installed"
)

// AgentTLS is the agent's TLS identity, as PEM (see pki.MachineIdentity).
type AgentTLS struct {
	CA, Cert, Key []byte
}

// Marker is the JSON content of MarkerPath.
type Marker struct {
	Machine       string    `json:"machine"`
	Namespace     string    `json:"namespace"`
	Configuration string    `json:"configuration,omitempty"`
	Commit        string    `json:"commit"`
	Time          time.Time `json:"time"`
}

// HostKey is an SSH host key the operator generated for a Machine, so the installed
// system is trusted from its first boot without trust-on-first-use.
type HostKey struct {
	// PrivatePEM is the private key in OpenSSH format. Secret: never log it.
	PrivatePEM []byte
	// AuthorizedKey is the public key in authorized_keys form (`ssh-ed25519 AAAA…`,
	// no comment, no newline), what Machine.spec.sshHostKey pins.
	AuthorizedKey string
}

// GenerateHostKey generates an ed25519 SSH host key. comment goes into the private
// key file (as ssh-keygen -C does), e.g. "root@<hostname>".
func GenerateHostKey(comment string) (HostKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return HostKey{}, fmt.Errorf("generate ssh host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return HostKey{}, fmt.Errorf("marshal ssh host key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return HostKey{}, fmt.Errorf("ssh host public key: %w", err)
	}
	return HostKey{
		PrivatePEM:    pem.EncodeToMemory(block),
		AuthorizedKey: strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(sshPub)), "\n"),
	}, nil
}

// ExtraFiles is what the new system receives besides the built closure.
type ExtraFiles struct {
	AgentTLS AgentTLS
	HostKey  HostKey
	Marker   Marker
}

// entry is one file or directory of the tree, in creation order.
type entry struct {
	path string // relative to the tree root, slash-separated
	mode fs.FileMode
	dir  bool
	data []byte
}

// layout lists the tree. Directories come before their files and carry the modes
// the target should have: tar (run by nixos-anywhere as root) applies them to
// directories that already exist too, so /etc and /var stay 0755 and only the
// agent's state directory is closed (0700).
func (f ExtraFiles) layout() ([]entry, error) {
	for name, v := range map[string][]byte{"CA certificate": f.AgentTLS.CA, "certificate": f.AgentTLS.Cert, "key": f.AgentTLS.Key} {
		if len(v) == 0 {
			return nil, fmt.Errorf("agent TLS %s is empty", name)
		}
	}
	if len(f.HostKey.PrivatePEM) == 0 || f.HostKey.AuthorizedKey == "" {
		return nil, errors.New("ssh host key is missing")
	}
	if f.Marker.Machine == "" || f.Marker.Namespace == "" {
		return nil, errors.New("marker needs the Machine's namespace and name")
	}
	marker, err := json.MarshalIndent(f.Marker, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marker: %w", err)
	}
	tls := strings.TrimPrefix(AgentTLSDir, "/")
	return []entry{
		{path: "etc", mode: 0o755, dir: true},
		{path: "etc/ssh", mode: 0o755, dir: true},
		{path: strings.TrimPrefix(HostKeyPath, "/"), mode: 0o600, data: f.HostKey.PrivatePEM},
		{path: strings.TrimPrefix(HostKeyPath, "/") + ".pub", mode: 0o644, data: []byte(f.HostKey.AuthorizedKey + "\n")},
		{path: "var", mode: 0o755, dir: true},
		{path: "var/lib", mode: 0o755, dir: true},
		{path: "var/lib/nio", mode: 0o755, dir: true},
		{path: strings.TrimPrefix(MarkerPath, "/"), mode: 0o644, data: append(marker, '\n')},
		{path: "var/lib/nio-agent", mode: 0o700, dir: true},
		{path: tls, mode: 0o700, dir: true},
		{path: tls + "/ca.crt", mode: 0o600, data: f.AgentTLS.CA},
		{path: tls + "/tls.crt", mode: 0o600, data: f.AgentTLS.Cert},
		{path: tls + "/tls.key", mode: 0o600, data: f.AgentTLS.Key},
	}, nil
}

// Write lays the tree out under root, which must not exist yet (its parent should be
// a 0700 directory, as the runner's work directory is). Modes are set explicitly, so
// the process umask does not matter.
func (f ExtraFiles) Write(root string) error {
	entries, err := f.layout()
	if err != nil {
		return err
	}
	if err := os.Mkdir(root, 0o700); err != nil {
		return fmt.Errorf("extra files: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(root, filepath.FromSlash(e.path))
		if e.dir {
			err = os.Mkdir(p, 0o700)
		} else {
			err = writeNew(p, e.data)
		}
		if err == nil {
			err = os.Chmod(p, e.mode)
		}
		if err != nil {
			return fmt.Errorf("extra files: %s: %w", e.path, err)
		}
	}
	// The tree's root becomes the target's / (nixos-anywhere resets it to 0755 too).
	if err := os.Chmod(root, 0o755); err != nil {
		return fmt.Errorf("extra files: %w", err)
	}
	return nil
}

// writeNew creates p with data, 0600 from the first byte on (never briefly readable).
func writeNew(p string, data []byte) error {
	file, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := file.Write(data); err != nil {
		file.Close()
		return err
	}
	return file.Close()
}
