package render

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Files from Secrets never enter the source: a path: flake is copied whole into the
// world-readable /nix/store. Their bytes travel beside the archive (the agent's
// Apply stream, or an SSH upload of their own) into a tmpfs directory on the host,
// the way NixOS users keep secrets (colmena's /run/keys, agenix's /run/agenix):
//
//	/run/nio-secrets/current/<path>    mode/owner/group as the configuration says
//
// `current` is a symlink the host swaps atomically to a complete new set, and back
// to the previous one on a rollback. The source gets SecretsMapFile instead, so the
// configuration can name the runtime location without the bytes:
//
//	services.foo.passwordFile = (import ./nio-secrets.nix)."secrets/db-password";
const (
	// SecretsDir is the host's secrets directory (nio-agent --secrets-dir).
	SecretsDir = "/run/nio-secrets"
	// SecretsCurrent is the directory the host's services read the secrets from.
	SecretsCurrent = SecretsDir + "/current"
	// SecretsMapFile is the generated Nix file at the root of the source.
	SecretsMapFile = "nio-secrets.nix"

	// MaxSecretBytes bounds one secret, MaxSecretsBytes all of a configuration's:
	// they are held in memory and sent in single messages, and a secret (a key, a
	// password, a token file) is small; anything bigger belongs in the store or on
	// disk by other means.
	MaxSecretBytes  = 1 << 20
	MaxSecretsBytes = 4 << 20

	// DefaultSecretMode is a secret's mode when the configuration names none.
	DefaultSecretMode = 0o400
)

var (
	// ErrSecretConflict: a secret's path is also a file or directory of the source,
	// or the source has its own SecretsMapFile.
	ErrSecretConflict = errors.New("secret path conflicts with the source")
	// ErrSecretTooLarge: a secret, or all of them, exceed the limits.
	ErrSecretTooLarge = errors.New("secrets too large")
)

// Secret is an additional file from a Secret, delivered outside the source.
type Secret struct {
	// Path is relative to the host's secrets directory, as the additional file names it.
	Path    string
	Content []byte
	// Mode is the permission bits (0 means DefaultSecretMode).
	Mode uint32
	// Owner and Group are names or numeric ids on the host ("" means root).
	Owner, Group string
}

// ParseMode reads an octal permission string like "0400" ("" is DefaultSecretMode).
func ParseMode(s string) (uint32, error) {
	if s == "" {
		return DefaultSecretMode, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("mode %q is not octal permission bits like 0400", s)
	}
	return uint32(m), nil
}

// CheckSecrets refuses secrets the host could not keep: invalid or duplicate paths,
// one secret's path the directory of another, a mode beyond 0777, more than
// MaxSecretBytes in one or MaxSecretsBytes in all. Errors name paths and sizes, never
// contents.
func CheckSecrets(secrets []Secret) error {
	seen := map[string]bool{}
	var total int
	for _, s := range secrets {
		if err := validPath(s.Path); err != nil {
			return fmt.Errorf("secret: %w", err)
		}
		if seen[s.Path] {
			return fmt.Errorf("secret %q given twice: %w", s.Path, ErrInvalidPath)
		}
		seen[s.Path] = true
		if s.Mode > 0o777 {
			return fmt.Errorf("secret %q: mode %o is more than permission bits: %w", s.Path, s.Mode, ErrInvalidPath)
		}
		if len(s.Content) > MaxSecretBytes {
			return fmt.Errorf("secret %q has %d bytes, more than %d: %w", s.Path, len(s.Content), MaxSecretBytes, ErrSecretTooLarge)
		}
		total += len(s.Content)
	}
	if total > MaxSecretsBytes {
		return fmt.Errorf("the secrets have %d bytes in all, more than %d: %w", total, MaxSecretsBytes, ErrSecretTooLarge)
	}
	for p := range seen {
		for d := parent(p); d != ""; d = parent(d) {
			if seen[d] {
				return fmt.Errorf("secret %q is also the directory of secret %q: %w", d, p, ErrInvalidPath)
			}
		}
	}
	return nil
}

// SecretsDigest identifies a set of secrets (paths, modes, owners, contents) for
// "did the secrets change since the last apply": HMAC-SHA256 keyed with key, so the
// digest, kept in the status, allows no guessing of a short password offline. ""
// for no secrets.
func SecretsDigest(key []byte, secrets []Secret) string {
	if len(secrets) == 0 {
		return ""
	}
	sorted := append([]Secret(nil), secrets...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	mac := hmac.New(sha256.New, key)
	for _, s := range sorted {
		mode := s.Mode
		if mode == 0 {
			mode = DefaultSecretMode
		}
		fmt.Fprintf(mac, "%q %o %q %q %d\n", s.Path, mode, s.Owner, s.Group, len(s.Content))
		mac.Write(s.Content)
	}
	return "hmac-sha256:" + hex.EncodeToString(mac.Sum(nil))
}

// secretsMap is the content of SecretsMapFile for the secrets at paths, after
// checking that none of them is a file or directory of the source.
func secretsMap(entries map[string]entry, paths []string) ([]byte, error) {
	if _, ok := entries[SecretsMapFile]; ok {
		return nil, fmt.Errorf("the source has its own %s, which NIO generates for secretRef files: rename it: %w", SecretsMapFile, ErrSecretConflict)
	}
	dirs := map[string]bool{}
	for p := range entries {
		for d := parent(p); d != ""; d = parent(d) {
			dirs[d] = true
		}
	}
	sorted := append([]string(nil), paths...)
	sort.Strings(sorted)
	var b bytes.Buffer
	b.WriteString("# Generated by NIO: where the host keeps this configuration's secretRef files.\n")
	b.WriteString("# Their contents are not in this source, and must not reach the Nix store: use\n")
	b.WriteString("# these strings where an option takes a file read at run time (passwordFile,\n")
	b.WriteString("# environmentFile, ...), never as a path literal or with builtins.readFile.\n{\n")
	for i, p := range sorted {
		if err := validPath(p); err != nil {
			return nil, fmt.Errorf("secret: %w", err)
		}
		if i > 0 && sorted[i-1] == p {
			return nil, fmt.Errorf("secret %q given twice: %w", p, ErrInvalidPath)
		}
		switch _, isEntry := entries[p]; {
		case p == SecretsMapFile:
			return nil, fmt.Errorf("secret %q: that path is the generated map of the secrets: %w", p, ErrSecretConflict)
		case isEntry:
			return nil, fmt.Errorf("secret %q is also a file of the source (repository or another additional file); a secret is not put into the source, so choose a path the source does not have: %w", p, ErrSecretConflict)
		case dirs[p]:
			return nil, fmt.Errorf("secret %q is a directory of the source: %w", p, ErrSecretConflict)
		}
		fmt.Fprintf(&b, "  %s = %s;\n", nixString(p), nixString(SecretsCurrent+"/"+p))
	}
	b.WriteString("}\n")
	return b.Bytes(), nil
}

// nixString quotes s as a Nix double-quoted string: no interpolation, no escapes
// that change its meaning.
func nixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`, "\r", `\r`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}
