package transport

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Over SSH the secrets take the way the agent gives them (agent/internal/server,
// secrets.go), to the same place: a tar of their own on the session's stdin —
// never inside the source archive — unpacked as root into
// <secrets-dir>/.staging-<set>, renamed to sets/<set> once complete, and the
// `current` link swapped to it just before nixos-rebuild activates; swapped back
// when nixos-rebuild fails or the switch is rolled back; the other sets pruned after
// a success. Owners go by name in the tar (GNU tar maps them as root; an unknown
// name leaves the file root's, never anyone else's) and are set again after
// activation, for users the new system creates.
const (
	// stageSecretsScript: $1 secrets dir, $2 set, $3 mode of the set's
	// directories. Prints the set `current` named before.
	stageSecretsScript = `umask 077 && prev=$(readlink -- "$1/current" 2>/dev/null || :) && mkdir -p -- "$1/sets" && chmod 0711 -- "$1" "$1/sets" && rm -rf -- "$1/.staging-$2" "$1/sets/$2" && mkdir -m "$3" -- "$1/.staging-$2" && tar -xf - -C "$1/.staging-$2" --same-owner --same-permissions --no-overwrite-dir && mv -- "$1/.staging-$2" "$1/sets/$2" && printf '%s\n' "${prev##*/}"`
	// currentSecretsScript prints the set `current` names ("" for none).
	currentSecretsScript = `prev=$(readlink -- "$1/current" 2>/dev/null || :) && printf '%s\n' "${prev##*/}"`
	// swapSecretsScript points current at sets/$2 with one rename, or removes it
	// when $2 is empty or that set is gone.
	swapSecretsScript = `if [ -n "$2" ] && [ -d "$1/sets/$2" ]; then ln -sfn -- "sets/$2" "$1/current.new" && mv -Tf -- "$1/current.new" "$1/current"; else rm -f -- "$1/current"; fi`
	// pruneSecretsScript removes every set but $2, and staging leftovers.
	pruneSecretsScript = `[ -d "$1/sets" ] || exit 0; for d in "$1"/sets/* "$1"/.staging-*; do [ -e "$d" ] || continue; [ "$d" = "$1/sets/$2" ] || rm -rf -- "$d"; done`
	// chownSecretScript gives "$1/sets/$2/$3" the owner and group "$4".
	chownSecretScript = `chown -h -- "$4" "$1/sets/$2/$3"`
)

// sshSecrets is the state of one Apply's secrets on the host.
type sshSecrets struct {
	dir, set, prev string
	files          []SecretFile
}

func secretsSetName(operationID string) string {
	sum := sha256.Sum256([]byte(operationID))
	return "op-" + hex.EncodeToString(sum[:8])
}

// stageSecrets writes the request's set (if any) completely on the host, and learns
// the current one. nil when the request leaves the secrets alone.
func (s *SSH) stageSecrets(ctx context.Context, c *sshConn, req ApplyRequest) (*sshSecrets, error) {
	if req.Secrets == nil || (req.Action != ActionSwitch && req.Action != ActionBoot && req.Action != ActionTest) {
		return nil, nil
	}
	dir := s.cfg.SecretsDir
	if dir == "" {
		dir = SecretsDir
	}
	st := &sshSecrets{dir: dir, files: req.Secrets.Files}
	var out, errb capBuffer
	argv := s.privileged("sh", "-c", currentSecretsScript, "sh", dir)
	var stdin *bytes.Reader
	if len(st.files) > 0 {
		st.set = secretsSetName(req.OperationID)
		data, dirMode, err := secretsTar(st.files)
		if err != nil {
			return nil, err
		}
		stdin = bytes.NewReader(data)
		argv = s.privileged("sh", "-c", stageSecretsScript, "sh", dir, st.set, fmt.Sprintf("%04o", dirMode))
	}
	r := remoteRun{argv: argv, stdout: &out, stderr: &errb}
	if stdin != nil {
		r.stdin = stdin
	}
	if err := s.run(ctx, c, r); err != nil {
		return nil, fmt.Errorf("write secrets to %s on %s: %w", dir, s.cfg.Host, commandError([]string{"stage secrets"}, err, errb.String()))
	}
	st.prev = strings.TrimSpace(out.String())
	return st, nil
}

// swapSecrets points the host's `current` at set.
func (s *SSH) swapSecrets(ctx context.Context, c *sshConn, st *sshSecrets, set string) error {
	var errb capBuffer
	if err := s.run(ctx, c, remoteRun{argv: s.privileged("sh", "-c", swapSecretsScript, "sh", st.dir, set), stderr: &errb}); err != nil {
		return fmt.Errorf("swap secrets on %s: %w", s.cfg.Host, commandError([]string{"swap secrets"}, err, errb.String()))
	}
	return nil
}

// restoreSecrets makes the previous set current again; a failure is reported in the
// output, since the operation already failed.
func (s *SSH) restoreSecrets(ctx context.Context, c *sshConn, st *sshSecrets, em *emitter) {
	if st == nil {
		return
	}
	if err := s.swapSecrets(ctx, c, st, st.prev); err != nil {
		em.log("secrets: restoring the previous set failed: "+err.Error(), true)
		return
	}
	em.log("secrets: the previous set is current again", false)
}

// ownSecrets sets the named owners again, after activation created them.
func (s *SSH) ownSecrets(ctx context.Context, c *sshConn, st *sshSecrets) error {
	for _, f := range st.files {
		if f.Owner == "" && f.Group == "" || isRoot(f.Owner) && isRoot(f.Group) {
			continue
		}
		spec := orRoot(f.Owner) + ":" + orRoot(f.Group)
		var errb capBuffer
		if err := s.run(ctx, c, remoteRun{argv: s.privileged("sh", "-c", chownSecretScript, "sh", st.dir, st.set, f.Path, spec), stderr: &errb}); err != nil {
			return fmt.Errorf("secret %q: owner %s: %w", f.Path, spec, commandError([]string{"chown"}, err, errb.String()))
		}
	}
	return nil
}

// pruneSecrets removes the sets that are not current.
func (s *SSH) pruneSecrets(ctx context.Context, c *sshConn, st *sshSecrets, keep string) {
	_ = s.run(ctx, c, remoteRun{argv: s.privileged("sh", "-c", pruneSecretsScript, "sh", st.dir, keep)})
}

func isRoot(id string) bool { return id == "" || id == "root" || id == "0" }

func orRoot(id string) string {
	if id == "" {
		return "root"
	}
	return id
}

// secretsTar packs the files, with their parent directories, as GNU tar restores
// them as root: modes as given, owners by name (or id).
func secretsTar(files []SecretFile) ([]byte, int64, error) {
	var dirMode int64 = 0o700
	for _, f := range files {
		if !isRoot(f.Owner) || !isRoot(f.Group) || secretFileMode(f)&0o077 != 0 {
			dirMode = 0o711
		}
	}
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range names {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: dirMode, Uname: "root", Gname: "root"}); err != nil {
			return nil, 0, err
		}
	}
	for _, f := range files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: secretFileMode(f), Size: int64(len(f.Data))}
		h.Uid, h.Uname = tarID(f.Owner)
		h.Gid, h.Gname = tarID(f.Group)
		if err := tw.WriteHeader(h); err != nil {
			return nil, 0, fmt.Errorf("secret %q: %w", f.Path, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, 0, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, 0, err
	}
	return buf.Bytes(), dirMode, nil
}

func secretFileMode(f SecretFile) int64 {
	if f.Mode == 0 {
		return 0o400
	}
	return int64(f.Mode)
}

// tarID is a tar header's id and name for an owner: a number goes as the id with no
// name (tar then uses the id), a name as the name with id 0 (an unknown name thus
// falls back to root).
func tarID(id string) (int, string) {
	if id == "" {
		return 0, "root"
	}
	if n, err := strconv.Atoi(id); err == nil && n >= 0 {
		return n, ""
	}
	return 0, id
}
