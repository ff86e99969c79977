package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Remote scripts are constants: their inputs arrive as positional parameters ("$1"…)
// of `sh -c <script> sh <args…>`, and the whole argv is quoted by shellCommand.
const (
	// unpackScript makes the operation's private directory afresh and unpacks the
	// archive arriving on stdin into it.
	unpackScript = `umask 077 && mkdir -p -- "$1" && rm -rf -- "$2" && mkdir -m 0700 -- "$2" && tar -xzf - -C "$2" --no-same-owner`
	// readLinksScript prints, per path, its link target and its resolved path (empty
	// lines when missing).
	readLinksScript = `for p in "$@"; do printf '%s\n' "$(readlink -- "$p" 2>/dev/null)" "$(readlink -e -- "$p" 2>/dev/null)"; done`
	// installFileScript writes stdin to "$1/$2" as root, 0600, in a 0700 directory,
	// replacing the file atomically.
	// inDirScript runs "$2"… in directory "$1": nixos-rebuild build leaves its
	// ./result link there, inside the operation's directory that is removed after.
	inDirScript       = `cd -- "$1" && shift && exec "$@"`
	installFileScript = `umask 077 && mkdir -p -- "$1" && chown 0:0 -- "$1" && chmod 0700 -- "$1" && cat > "$1/.$2.tmp" && chown 0:0 -- "$1/.$2.tmp" && chmod 0600 -- "$1/.$2.tmp" && mv -f -- "$1/.$2.tmp" "$1/$2"`
)

// maxFactsBytes caps a nixos-facter report (real ones are 50–500 KB).
const maxFactsBytes = 16 << 20

var (
	operationIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	generationPattern  = regexp.MustCompile(`^system-([0-9]+)-link$`)
)

// Apply uploads the source and runs nixos-rebuild on the host, streaming its output.
//
// SSH has no magic rollback of its own. With ConfirmTimeout set (switch and test), the
// switch counts as confirmed only when a NEW SSH connection, made within the timeout
// after activation, logs in and runs a command — the same proof the agent's Confirm
// gives. When it can't, the previous system is re-activated over the connection that
// is still open and the result is RolledBack (or Failed when that did not work
// either); it is never Succeeded.
//
// With req.Timeout, Apply gives up after Timeout + ConfirmTimeout + WaitMargin with
// an error wrapping ErrTimeout, and closes the connection. That is the only bound
// over SSH, and what it does on the host is limited: the command has no terminal, so
// sshd sends it no SIGHUP; nixos-rebuild (and the nix build under it) runs on until
// it next writes output — then SIGPIPE usually ends it — or until it finishes. A
// build that hangs silently keeps running on the host (kill it there, or reboot).
// An activation that had begun completes if nixos-rebuild runs it through
// systemd-run (as recent NixOS releases do); otherwise SIGPIPE can cut it short.
// The agent enforces the deadline on the host itself, and never cuts an
// activation; prefer it.
//
// A request with HealthChecks is refused (ErrHealthChecksNeedAgent): only the agent
// runs them, and a configuration with checks is never applied unchecked.
//
// Once nixos-rebuild has ended, its outcome is never lost: when the system links
// cannot be read afterwards (the switch restarted the network, the connection
// dropped), the read is retried over new connections, and if it still fails the
// outcome is returned with the generation and store path unknown — an error here
// would make the caller apply the same commit again.
func (s *SSH) Apply(ctx context.Context, req ApplyRequest) (ApplyResult, error) {
	return boundApply(ctx, req, func(ctx context.Context) (ApplyResult, error) { return s.apply(ctx, req) })
}

func (s *SSH) apply(ctx context.Context, req ApplyRequest) (ApplyResult, error) {
	res := ApplyResult{Transport: nio.TransportSSH}
	if req.HealthChecks != nil {
		// The Fallback refuses first; this is for any other caller.
		return res, fmt.Errorf("ssh %s: %w: SSH cannot run them; nothing was applied", s.cfg.Host, ErrHealthChecksNeedAgent)
	}
	if err := validateApply(req); err != nil {
		return res, err
	}
	c, err := s.connect(ctx)
	if err != nil {
		return res, err
	}
	defer c.Close()
	em := newEmitter(req.OnEvent)

	if s.cfg.User != "root" {
		// Fail fast and clearly before anything is uploaded.
		if _, err := s.output(ctx, c, 0, s.privileged("true")...); err != nil {
			return res, fmt.Errorf("check sudo: %w", err)
		}
	}
	before, err := s.readSystem(ctx, c)
	if err != nil {
		return res, err
	}

	dir := path.Join(s.cfg.StateDir, req.OperationID)
	em.phase(PhaseReceivingSource, "upload to "+dir)
	sent, err := s.upload(ctx, c, req.Source, dir)
	res.SourceBytesSent = sent
	if err != nil {
		return res, fmt.Errorf("upload source to %s: %w", s.cfg.Host, err)
	}
	defer s.removeDir(ctx, c, dir)

	// The secrets, complete, before anything activates (ssh_secrets.go).
	sec, err := s.stageSecrets(ctx, c, req)
	if err != nil {
		return res, err
	}
	if sec != nil {
		if err := s.swapSecrets(ctx, c, sec, sec.set); err != nil {
			s.restoreSecrets(ctx, c, sec, em)
			s.pruneSecrets(ctx, c, sec, sec.prev)
			return res, err
		}
	}

	argv := s.privileged(append([]string{"sh", "-c", inDirScript, "sh", dir}, rebuildArgv(req, dir)...)...)
	em.phase(PhaseBuilding, strings.Join(rebuildArgv(req, dir), " "))
	err = s.run(ctx, c, remoteRun{argv: argv, stdout: em.lines(false), stderr: em.lines(true)})
	em.flush()
	res.LogTail = em.tail()
	var exit *ssh.ExitError
	switch {
	case errors.As(err, &exit):
		res.Outcome = OutcomeFailed
		res.Message = fmt.Sprintf("nixos-rebuild %s exited with status %d", req.Action, exit.ExitStatus())
		s.restoreSecrets(ctx, c, sec, em)
	case err != nil:
		return res, fmt.Errorf("nixos-rebuild on %s: %w", s.cfg.Host, err)
	default:
		res.Outcome = OutcomeSucceeded
	}

	if res.Outcome == OutcomeSucceeded && sec != nil {
		if err := s.ownSecrets(ctx, c, sec); err != nil {
			s.rollBack(ctx, c, req, before, em, sec, &res, fmt.Sprintf("secrets: %v", err))
		}
	}
	if res.Outcome == OutcomeSucceeded && req.ConfirmTimeout > 0 && (req.Action == ActionSwitch || req.Action == ActionTest) {
		s.confirmByReconnect(ctx, c, req, before, em, sec, &res)
	}
	if sec != nil {
		keep := sec.prev
		if res.Outcome == OutcomeSucceeded {
			keep = sec.set
		}
		s.pruneSecrets(ctx, c, sec, keep)
	}
	after, err := s.readSystemAfter(ctx, c)
	if err != nil {
		note := fmt.Sprintf("nixos-rebuild %s ended (%s), but the system could not be read afterwards: %v; generation and store path unknown", req.Action, res.Outcome, err)
		em.emit(Event{Kind: EventLog, Line: note})
		if res.Message == "" {
			res.Message = note
		} else {
			res.Message += "; " + note
		}
		res.LogTail = em.tail()
		em.phase(PhaseDone, string(res.Outcome))
		return res, nil
	}
	res.Generation = after.Generation
	// The store path names what this operation built; only a success can tell.
	if res.Outcome == OutcomeSucceeded {
		switch req.Action {
		case ActionSwitch, ActionBoot:
			res.StorePath = after.profileSystem
		case ActionTest:
			res.StorePath = after.CurrentSystem
		}
	}
	em.phase(PhaseDone, string(res.Outcome))
	return res, nil
}

// readAfterRetries are the pauses before reading the system again over a new
// connection, when reading it after nixos-rebuild failed.
var readAfterRetries = []time.Duration{time.Second, 3 * time.Second}

// readSystemAfter reads the system after nixos-rebuild: over c, and when that fails
// over new connections (c may have died with the switch).
func (s *SSH) readSystemAfter(ctx context.Context, c *sshConn) (hostSystem, error) {
	h, err := s.readSystem(ctx, c)
	for _, pause := range readAfterRetries {
		if err == nil || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return h, err
		case <-t.C:
		}
		var nc *sshConn
		if nc, err = s.connect(ctx); err == nil {
			h, err = s.readSystem(ctx, nc)
			nc.Close()
		}
	}
	return h, err
}

// confirmByReconnect proves the activated system still lets the operator in, with a
// new connection; without that proof it rolls back over c (see Apply).
func (s *SSH) confirmByReconnect(ctx context.Context, c *sshConn, req ApplyRequest, before hostSystem, em *emitter, sec *sshSecrets, res *ApplyResult) {
	em.phase(PhaseAwaitingConfirm, "new ssh connection within "+req.ConfirmTimeout.String())
	cctx, cancel := context.WithTimeout(ctx, req.ConfirmTimeout)
	err := s.ping(cctx)
	cancel()
	if err == nil {
		return
	}
	if ctx.Err() != nil {
		res.Outcome, res.Message = OutcomeFailed, "cancelled before the switch was confirmed"
		return
	}
	s.rollBack(ctx, c, req, before, em, sec, res, fmt.Sprintf("not confirmed: a new SSH connection failed after activation (%v)", err))
}

// rollBack re-activates the system that ran before, over c, because of why; the
// previous secrets first, so its services start with the ones they had.
func (s *SSH) rollBack(ctx context.Context, c *sshConn, req ApplyRequest, before hostSystem, em *emitter, sec *sshSecrets, res *ApplyResult, why string) {
	em.phase(PhaseRollingBack, why)
	var argv []string
	switch {
	case req.Action == ActionSwitch:
		argv = s.privileged("nixos-rebuild", "switch", "--rollback")
	case before.CurrentSystem != "":
		argv = s.privileged(before.CurrentSystem+"/bin/switch-to-configuration", "test")
	}
	if argv == nil {
		res.Outcome = OutcomeFailed
		res.Message = why + "; the previous system is unknown, so nothing was rolled back"
		return
	}
	s.restoreSecrets(ctx, c, sec, em)
	rbErr := s.run(ctx, c, remoteRun{argv: argv, stdout: em.lines(false), stderr: em.lines(true)})
	em.flush()
	res.LogTail = em.tail()
	if rbErr != nil {
		res.Outcome = OutcomeFailed
		res.Message = fmt.Sprintf("%s; rolling back failed too: %v", why, rbErr)
		return
	}
	res.Outcome = OutcomeRolledBack
	res.Message = why + "; the previous system was re-activated"
}

// validateApply refuses requests that can't be run before anything is sent.
func validateApply(req ApplyRequest) error {
	if !operationIDPattern.MatchString(req.OperationID) {
		return fmt.Errorf("operation id %q: want letters, digits, '.', '_' or '-'", req.OperationID)
	}
	switch req.Action {
	case ActionSwitch, ActionBoot, ActionTest, ActionDryActivate, ActionBuild:
	default:
		return fmt.Errorf("unknown action %q", req.Action)
	}
	if req.Source.Open == nil {
		return errors.New("no source to upload")
	}
	t := req.Target
	switch {
	case t.FlakeAttr != "" && t.ModuleFile == "":
		if err := checkRelative(t.FlakeDir, true); err != nil {
			return fmt.Errorf("flake dir: %w", err)
		}
	case t.ModuleFile != "" && t.FlakeAttr == "":
		if err := checkRelative(t.ModuleFile, false); err != nil {
			return fmt.Errorf("module file: %w", err)
		}
	default:
		return errors.New("target needs exactly one of a flake attribute and a module file")
	}
	return nil
}

// rebuildArgv is the nixos-rebuild command for a source unpacked in dir.
func rebuildArgv(req ApplyRequest, dir string) []string {
	t := req.Target
	if t.ModuleFile != "" {
		// --no-flake: a host whose /etc/nixos has a flake.nix would otherwise ignore -I.
		return []string{"nixos-rebuild", string(req.Action), "--no-flake", "-I", "nixos-config=" + path.Join(dir, t.ModuleFile)}
	}
	return []string{"nixos-rebuild", string(req.Action), "--flake", path.Join(dir, t.FlakeDir) + "#" + t.FlakeAttr}
}

func checkRelative(p string, allowDot bool) error {
	if p == "" || p == "." {
		if allowDot {
			return nil
		}
		return errors.New("empty path")
	}
	if strings.HasPrefix(p, "/") || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("%q is not a clean relative path inside the source", p)
	}
	return nil
}

// upload sends the archive through the session's stdin into dir.
func (s *SSH) upload(ctx context.Context, c *sshConn, src Source, dir string) (int64, error) {
	rc, err := src.Open()
	if err != nil {
		return 0, fmt.Errorf("open source: %w", err)
	}
	defer rc.Close()
	counted := &countingReader{r: rc}
	argv := s.privileged("sh", "-c", unpackScript, "sh", s.cfg.StateDir, dir)
	var errb capBuffer
	err = s.run(ctx, c, remoteRun{argv: argv, stdin: counted, stderr: &errb})
	if err != nil {
		return counted.n, commandError([]string{"unpack"}, err, errb.String())
	}
	return counted.n, nil
}

// removeDir deletes the operation's directory; a failure leaves a directory the next
// operation with that id replaces, so it is not reported.
func (s *SSH) removeDir(ctx context.Context, c *sshConn, dir string) {
	if ctx.Err() != nil {
		return
	}
	_ = s.run(ctx, c, remoteRun{argv: s.privileged("rm", "-rf", "--", dir)})
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// hostSystem is what readSystem found.
type hostSystem struct {
	SystemStatus
	profileSystem string
}

func (s *SSH) readSystem(ctx context.Context, c *sshConn) (hostSystem, error) {
	links := []string{s.cfg.ProfilePath, s.cfg.CurrentSystemLink, s.cfg.BootedSystemLink}
	// What a reboot would change, as NixOS decides it: kernel, initrd, modules.
	for _, sys := range []string{s.cfg.CurrentSystemLink, s.cfg.BootedSystemLink} {
		for _, part := range bootParts {
			links = append(links, sys+"/"+part)
		}
	}
	argv := append([]string{"sh", "-c", readLinksScript, "sh"}, links...)
	out, err := s.output(ctx, c, 64<<10, argv...)
	if err != nil {
		return hostSystem{}, fmt.Errorf("read system links on %s: %w", s.cfg.Host, err)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != 2*len(links) {
		return hostSystem{}, fmt.Errorf("read system links on %s: unexpected output %q", s.cfg.Host, out)
	}
	resolved := func(i int) string { return lines[2*i+1] }
	h := hostSystem{profileSystem: resolved(0)}
	h.Transport = nio.TransportSSH
	h.CurrentSystem, h.BootedSystem = resolved(1), resolved(2)
	if m := generationPattern.FindStringSubmatch(path.Base(lines[0])); m != nil {
		h.Generation, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if h.BootedSystem != "" && h.CurrentSystem != "" {
		for i := range bootParts {
			if resolved(3+i) != resolved(3+len(bootParts)+i) {
				h.NeedsReboot = true
			}
		}
		// A generation set with action boot waits for the next boot.
		if p := h.profileSystem; p != "" && p != h.CurrentSystem && p != h.BootedSystem {
			h.NeedsReboot = true
		}
	}
	return h, nil
}

// bootParts are the parts of a NixOS system that only a reboot activates.
var bootParts = []string{"kernel", "initrd", "kernel-modules"}

// Status reads the host's current and booted system and profile generation.
func (s *SSH) Status(ctx context.Context) (SystemStatus, error) {
	c, err := s.connect(ctx)
	if err != nil {
		return SystemStatus{}, err
	}
	defer c.Close()
	h, err := s.readSystem(ctx, c)
	return h.SystemStatus, err
}

// Facts runs nixos-facter (as root) and returns its JSON report.
func (s *SSH) Facts(ctx context.Context) ([]byte, error) {
	c, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	out, err := s.output(ctx, c, maxFactsBytes, s.privileged("nixos-facter")...)
	if err != nil {
		return nil, fmt.Errorf("nixos-facter on %s: %w", s.cfg.Host, err)
	}
	out = bytes.TrimSpace(out)
	if !json.Valid(out) || len(out) == 0 || out[0] != '{' {
		return nil, fmt.Errorf("nixos-facter on %s: output is not a JSON object", s.cfg.Host)
	}
	return out, nil
}

// Confirm is not possible over SSH: there is no waiting host-side operation to
// confirm. Apply confirms switches itself (see Apply).
func (s *SSH) Confirm(context.Context, string) error {
	return fmt.Errorf("confirm over ssh: %w: magic rollback needs nio-agent; ssh applies confirm by reconnecting during Apply", errors.ErrUnsupported)
}

// Probe logs in and runs `true`.
func (s *SSH) Probe(ctx context.Context) ProbeResult {
	err := s.ping(ctx)
	return ProbeResult{SSHReachable: err == nil, SSHError: err, SSHHostKeyFingerprint: s.SeenHostKeyFingerprint()}
}

// ping proves a new connection logs in and runs a command.
func (s *SSH) ping(ctx context.Context) error {
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := s.run(ctx, c, remoteRun{argv: []string{"true"}}); err != nil {
		return fmt.Errorf("ssh %s: run true: %w", s.addr(), err)
	}
	return nil
}

// AgentTLSFiles is the agent's TLS identity, as its --tls-dir holds it.
type AgentTLSFiles struct {
	CACert, Cert, Key []byte
}

// InstallAgentTLS writes ca.crt, tls.crt and tls.key into the agent's TLS directory
// (0700, files 0600, owned by root). The contents travel on the session's stdin,
// never on a command line.
func (s *SSH) InstallAgentTLS(ctx context.Context, files AgentTLSFiles) error {
	if len(files.CACert) == 0 || len(files.Cert) == 0 || len(files.Key) == 0 {
		return errors.New("install agent TLS: ca.crt, tls.crt and tls.key are all required")
	}
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	// The key last: a half-finished install never pairs a new key with an old cert.
	for _, f := range []struct {
		name string
		data []byte
	}{{"ca.crt", files.CACert}, {"tls.crt", files.Cert}, {"tls.key", files.Key}} {
		argv := s.privileged("sh", "-c", installFileScript, "sh", s.cfg.AgentTLSDir, f.name)
		var errb capBuffer
		if err := s.run(ctx, c, remoteRun{argv: argv, stdin: bytes.NewReader(f.data), stderr: &errb}); err != nil {
			return fmt.Errorf("install %s/%s on %s: %w", s.cfg.AgentTLSDir, f.name, s.cfg.Host, commandError([]string{"install"}, err, errb.String()))
		}
	}
	return nil
}

// RestartAgent restarts nio-agent, so it serves a newly installed identity.
func (s *SSH) RestartAgent(ctx context.Context) error {
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	argv := s.privileged("systemctl", "restart", "nio-agent")
	var errb capBuffer
	if err := s.run(ctx, c, remoteRun{argv: argv, stderr: &errb}); err != nil {
		return fmt.Errorf("restart nio-agent on %s: %w", s.cfg.Host, commandError(argv, err, errb.String()))
	}
	return nil
}

// FileExists tells whether path exists on the host (as the privileged user: the
// agent's TLS directory is root-only). Exit status 1 of `test -e` is "no"; anything
// else that fails is an error.
func (s *SSH) FileExists(ctx context.Context, path string) (bool, error) {
	c, err := s.connect(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	argv := s.privileged("test", "-e", path)
	var errb capBuffer
	err = s.run(ctx, c, remoteRun{argv: argv, stderr: &errb})
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitStatus() == 1 && errb.String() == "":
		return false, nil
	}
	return false, fmt.Errorf("check %s on %s: %w", path, s.cfg.Host, commandError(argv, err, errb.String()))
}
