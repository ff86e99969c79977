package server

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
)

// Secrets (proto: SecretsManifest, SecretFile) are files the operator's
// configuration takes from Kubernetes Secrets. They never enter the source archive,
// the work dir, the journal or the Nix store: the agent keeps them in memory until
// the operation's first step, then writes them into Config.SecretsDir — a tmpfs
// (/run/nio-secrets, the unit's RuntimeDirectory, kept across agent restarts) —
// laid out as
//
//	<secrets-dir>/current -> sets/<set>       the set services read (one symlink)
//	<secrets-dir>/sets/<set>/<path>           a complete set, one per operation
//	<secrets-dir>/.staging-<set>/             a set being written
//
// A set is written in full under .staging-<set> and renamed to sets/<set>, so a set
// under sets/ is never half-written. Right before activation `current` is swapped
// (a new symlink renamed over it: atomic) to the operation's set; a rollback swaps
// it back to the previous one, which is kept until the operation ends; an empty
// set removes `current`. The journal records both set names (never contents), so
// a recovered operation swaps the same way.
//
// Directories are 0700, or 0711 (traversable, not listable) when some secret is
// for another user or group; files get their mode (default 0400) and owner (default
// root). An owner or group the host does not know yet — a user the new system
// creates — is resolved again after activation; still unknown, the operation rolls
// back.
const (
	maxSecretFiles    = 256
	maxSecretBytes    = 1 << 20
	maxSecretsBytes   = 4 << 20
	defaultSecretMode = 0o400
)

// journalSecrets is the journal's record of an operation's secrets.
type journalSecrets struct {
	// Set is the operation's set under sets/ ("" for the empty set).
	Set string `json:"set"`
	// Previous is the set `current` named before the operation ("" for none).
	Previous string `json:"previous"`
	// Pending are the files whose owner or group the host did not know when the set
	// was written; they are resolved after activation.
	Pending []secretOwner `json:"pending_owners,omitempty"`
}

// receiveSecrets reads the SecretFiles the header announced. It checks every bound
// as it goes, so nothing oversized is ever held, and returns before anything is
// written anywhere.
func (s *Server) receiveSecrets(stream agentv1.AgentService_ApplyServer, m *agentv1.SecretsManifest) ([]*agentv1.SecretFile, error) {
	if m == nil {
		return nil, nil
	}
	files := make([]*agentv1.SecretFile, 0, m.GetCount())
	seen := map[string]bool{}
	total := 0
	for range m.GetCount() {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, &streamError{errors.New("the stream ended before the announced secrets")}
		}
		if err != nil {
			return nil, &streamError{err}
		}
		f := req.GetSecret()
		if f == nil {
			return nil, fmt.Errorf("expected %d SecretFiles after the header", m.GetCount())
		}
		if err := checkSecretFile(f); err != nil {
			return nil, err
		}
		if seen[f.GetPath()] {
			return nil, fmt.Errorf("secret %q given twice", f.GetPath())
		}
		seen[f.GetPath()] = true
		if total += len(f.GetData()); total > maxSecretsBytes {
			return nil, fmt.Errorf("the secrets exceed %d bytes in all", maxSecretsBytes)
		}
		files = append(files, f)
	}
	for p := range seen {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if seen[d] {
				return nil, fmt.Errorf("secret %q is also the directory of secret %q", d, p)
			}
		}
	}
	return files, nil
}

// checkSecretFile refuses a path that could leave the set, a mode beyond 0777, an
// oversized file, and owner strings that are neither a name nor an id. The message
// names the path, never the content.
func checkSecretFile(f *agentv1.SecretFile) error {
	p := f.GetPath()
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../") || strings.ContainsAny(p, "\x00\\") {
		return fmt.Errorf("secret path %q must be relative and clean", p)
	}
	if f.GetMode() > 0o777 {
		return fmt.Errorf("secret %q: mode %o is more than permission bits", p, f.GetMode())
	}
	if len(f.GetData()) > maxSecretBytes {
		return fmt.Errorf("secret %q exceeds %d bytes", p, maxSecretBytes)
	}
	for _, id := range []string{f.GetOwner(), f.GetGroup()} {
		if strings.ContainsAny(id, "/:\x00\n") || len(id) > 64 {
			return fmt.Errorf("secret %q: owner or group %q is not a name or an id", p, id)
		}
	}
	return nil
}

func (s *Server) secretsSets() string { return filepath.Join(s.cfg.SecretsDir, "sets") }

func (s *Server) currentLink() string { return filepath.Join(s.cfg.SecretsDir, "current") }

// currentSet is the set `current` names ("" for none).
func (s *Server) currentSet() (string, error) {
	target, err := os.Readlink(s.currentLink())
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", s.currentLink(), err)
	}
	return filepath.Base(target), nil
}

// stageSecrets writes op's set completely under sets/, and records it in the
// journal (not yet on disk: the caller's next step writes it). The files are
// dropped from memory.
func (s *Server) stageSecrets(op *operation) error {
	files := op.secrets
	op.secrets = nil
	if op.header.GetSecrets() == nil {
		return nil
	}
	if s.cfg.SecretsDir == "" {
		if len(files) == 0 {
			return nil // an empty set: there is no secrets dir to clear
		}
		return errors.New("this agent has no --secrets-dir; it cannot take secrets")
	}
	prev, err := s.currentSet()
	if err != nil {
		return err
	}
	js := &journalSecrets{Previous: prev}
	if len(files) > 0 {
		js.Set = "op-" + opHash(op.id)
		if js.Pending, err = s.writeSet(js.Set, files); err != nil {
			return err
		}
	}
	op.jr.Secrets = js
	return nil
}

// writeSet writes files to .staging-<set>, then renames it to sets/<set>. It returns
// the files whose owner is not known yet.
func (s *Server) writeSet(set string, files []*agentv1.SecretFile) ([]secretOwner, error) {
	dirMode := os.FileMode(0o700)
	for _, f := range files {
		if f.GetOwner() != "" && f.GetOwner() != "0" && f.GetOwner() != "root" ||
			f.GetGroup() != "" && f.GetGroup() != "0" && f.GetGroup() != "root" || secretMode(f)&0o077 != 0 {
			dirMode = 0o711
		}
	}
	// The top and sets/ only need traversing by a secret's owner; listing them shows
	// operation hashes at most. The set itself is what keeps others out.
	for _, d := range []string{s.cfg.SecretsDir, s.secretsSets()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("secrets dir: %w", err)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, fmt.Errorf("secrets dir: %w", err)
		}
	}
	staging := filepath.Join(s.cfg.SecretsDir, ".staging-"+set)
	final := filepath.Join(s.secretsSets(), set)
	if err := os.RemoveAll(staging); err != nil {
		return nil, fmt.Errorf("clean staging dir: %w", err)
	}
	if cur, _ := s.currentSet(); cur == set {
		// A retry of the operation whose set is already current: keep it in
		// place rather than leave `current` dangling while it is rewritten.
		return nil, fmt.Errorf("secrets set %s is current already; retry with a new operation", set)
	}
	if err := os.RemoveAll(final); err != nil {
		return nil, fmt.Errorf("clean set: %w", err)
	}
	if err := os.Mkdir(staging, dirMode); err != nil {
		return nil, fmt.Errorf("staging dir: %w", err)
	}
	if err := os.Chmod(staging, dirMode); err != nil {
		return nil, fmt.Errorf("staging dir: %w", err)
	}
	var pending []secretOwner
	for _, f := range files {
		known, err := writeSecret(staging, f, dirMode)
		if err != nil {
			os.RemoveAll(staging)
			return nil, err
		}
		if !known {
			pending = append(pending, secretOwner{Path: f.GetPath(), Owner: f.GetOwner(), Group: f.GetGroup()})
		}
	}
	if err := os.Rename(staging, final); err != nil {
		os.RemoveAll(staging)
		return nil, fmt.Errorf("install secrets set: %w", err)
	}
	return pending, nil
}

func secretMode(f *agentv1.SecretFile) os.FileMode {
	if f.GetMode() == 0 {
		return defaultSecretMode
	}
	return os.FileMode(f.GetMode())
}

// writeSecret creates one file (never through a symlink, never over an existing
// file), then sets its mode, then its owner where the host knows it: after a chown
// root without CAP_FOWNER could not chmod it any more.
func writeSecret(root string, f *agentv1.SecretFile, dirMode os.FileMode) (ownerKnown bool, err error) {
	rel := filepath.FromSlash(f.GetPath())
	dir := root
	for _, part := range strings.Split(filepath.Dir(rel), string(filepath.Separator)) {
		if part == "." {
			continue
		}
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, dirMode); err != nil && !errors.Is(err, os.ErrExist) {
			return false, fmt.Errorf("secret %q: %w", f.GetPath(), err)
		}
		if err := os.Chmod(dir, dirMode); err != nil {
			return false, fmt.Errorf("secret %q: %w", f.GetPath(), err)
		}
	}
	p := filepath.Join(root, rel)
	fh, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return false, fmt.Errorf("secret %q: %w", f.GetPath(), err)
	}
	_, err = fh.Write(f.GetData())
	if err == nil {
		err = fh.Sync()
	}
	if err == nil {
		err = fh.Chmod(secretMode(f))
	}
	uid, gid, known := resolveOwner(f)
	if err == nil && known && (uid != 0 || gid != 0) {
		err = fh.Chown(uid, gid)
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("secret %q: %w", f.GetPath(), err)
	}
	return known, nil
}

// resolveOwner returns the uid and gid of f's owner and group; ok is false when a
// name is not (yet) known on the host.
func resolveOwner(f *agentv1.SecretFile) (uid, gid int, ok bool) {
	uid, uok := lookupID(f.GetOwner(), func(n string) (string, error) {
		u, err := user.Lookup(n)
		if err != nil {
			return "", err
		}
		return u.Uid, nil
	})
	gid, gok := lookupID(f.GetGroup(), func(n string) (string, error) {
		g, err := user.LookupGroup(n)
		if err != nil {
			return "", err
		}
		return g.Gid, nil
	})
	return uid, gid, uok && gok
}

func lookupID(name string, lookup func(string) (string, error)) (int, bool) {
	if name == "" || name == "root" {
		return 0, true
	}
	if id, err := strconv.Atoi(name); err == nil && id >= 0 {
		return id, true
	}
	s, err := lookup(name)
	if err != nil {
		return 0, false
	}
	id, err := strconv.Atoi(s)
	return id, err == nil
}

// swapSecrets points `current` at set ("" removes it): a new symlink renamed over
// the old one, so a reader sees the old set or the new one, never a mix. A set that
// is gone (a reboot emptied /run) also removes it.
func (s *Server) swapSecrets(set string) error {
	link := s.currentLink()
	if set == "" {
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", link, err)
		}
		return nil
	}
	if _, err := os.Lstat(filepath.Join(s.secretsSets(), set)); err != nil {
		_ = os.Remove(link)
		return fmt.Errorf("secrets set %s: %w", set, err)
	}
	tmp := link + ".new"
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Join("sets", set), tmp); err != nil {
		return fmt.Errorf("secrets link: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("secrets link: %w", err)
	}
	return nil
}

// installSecrets makes op's set current (before activation; idempotent, so a
// recovered operation may run it again).
func (s *Server) installSecrets(op *operation) error {
	js := op.jr.Secrets
	if js == nil {
		return nil
	}
	if err := s.swapSecrets(js.Set); err != nil {
		return err
	}
	op.agentLine(fmt.Sprintf("secrets: %s/current is the set of this operation", s.cfg.SecretsDir))
	return nil
}

// restoreSecrets makes the previous set current again (a rollback).
func (s *Server) restoreSecrets(op *operation) {
	js := op.jr.Secrets
	if js == nil {
		return
	}
	if err := s.swapSecrets(js.Previous); err != nil {
		op.agentLine("secrets: restoring the previous set failed: " + err.Error())
		return
	}
	op.agentLine("secrets: the previous set is current again")
}

// chownDeferred gives the files of op's set whose owner or group the host did not
// know at staging the ids it knows now (after activation created them). It names
// the first that is still unknown.
func (s *Server) chownDeferred(op *operation) error {
	js := op.jr.Secrets
	if js == nil || js.Set == "" {
		return nil
	}
	for _, f := range js.Pending {
		uid, gid, ok := resolveOwner(&agentv1.SecretFile{Owner: f.Owner, Group: f.Group})
		if !ok {
			return fmt.Errorf("secret %q: owner %q or group %q is unknown on the host, also after activation", f.Path, f.Owner, f.Group)
		}
		if err := os.Lchown(filepath.Join(s.secretsSets(), js.Set, filepath.FromSlash(f.Path)), uid, gid); err != nil {
			return fmt.Errorf("secret %q: %w", f.Path, err)
		}
	}
	return nil
}

// secretOwner is a file of a set whose owner still has to be resolved.
type secretOwner struct {
	Path  string `json:"path"`
	Owner string `json:"owner,omitempty"`
	Group string `json:"group,omitempty"`
}

// pruneSecrets removes every set but the current one, and staging leftovers.
func (s *Server) pruneSecrets() {
	if s.cfg.SecretsDir == "" {
		return
	}
	cur, err := s.currentSet()
	if err != nil {
		s.log.Warn("prune secrets", "err", err)
		return
	}
	entries, _ := os.ReadDir(s.secretsSets())
	for _, e := range entries {
		if e.Name() != cur {
			if err := os.RemoveAll(filepath.Join(s.secretsSets(), e.Name())); err != nil {
				s.log.Warn("prune secrets set", "set", e.Name(), "err", err)
			}
		}
	}
	top, _ := os.ReadDir(s.cfg.SecretsDir)
	for _, e := range top {
		if strings.HasPrefix(e.Name(), ".staging-") || e.Name() == "current.new" {
			_ = os.RemoveAll(filepath.Join(s.cfg.SecretsDir, e.Name()))
		}
	}
}
