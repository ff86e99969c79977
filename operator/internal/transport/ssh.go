package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Defaults of the SSH transport, the paths of a NixOS host.
const (
	DefaultSSHStateDir       = "/var/lib/nio/ssh-src"
	DefaultAgentTLSDir       = "/var/lib/nio-agent/tls"
	DefaultProfilePath       = "/nix/var/nix/profiles/system"
	DefaultCurrentSystemLink = "/run/current-system"
	DefaultBootedSystemLink  = "/run/booted-system"
)

// SSHConfig says how to reach a host over SSH and where things live on it.
type SSHConfig struct {
	// Host is the Machine's spec.ipAddress; Port its spec.sshPort (default 22).
	Host string
	Port int
	// User logs in (default root). Any other user runs the privileged steps through
	// `sudo -n`, and so needs passwordless sudo.
	User string
	// PrivateKey is the login key (OpenSSH or PEM, unencrypted).
	PrivateKey []byte
	// HostKey pins the host key, in authorized_keys form (spec.sshHostKey).
	HostKey string
	// HostKeyFingerprint is the recorded "SHA256:…" fingerprint
	// (status.sshHostKeyFingerprint), enforced when HostKey is empty. When both are
	// empty the first key seen is accepted and reported (SSH.SeenHostKeyFingerprint,
	// ProbeResult) for the controller to record.
	HostKeyFingerprint string
	// DialTimeout bounds TCP connect plus SSH handshake (default 15s).
	DialTimeout time.Duration

	// StateDir holds one 0700 directory per operation for the unpacked source
	// (default DefaultSSHStateDir).
	StateDir string
	// SecretsDir is where Apply delivers secrets, as the agent does (default
	// SecretsDir, /run/nio-secrets).
	SecretsDir string
	// AgentTLSDir is where InstallAgentTLS writes the agent's identity
	// (default DefaultAgentTLSDir).
	AgentTLSDir string
	// ProfilePath, CurrentSystemLink and BootedSystemLink are read for status
	// (defaults: the NixOS paths).
	ProfilePath       string
	CurrentSystemLink string
	BootedSystemLink  string
}

// SSHConfigFor fills an SSHConfig from a Machine and its login key.
func SSHConfigFor(m *nio.Machine, privateKey []byte) SSHConfig {
	return SSHConfig{
		Host:               m.Spec.IPAddress,
		Port:               int(m.Spec.SSHPort),
		User:               m.Spec.SSHUser,
		PrivateKey:         privateKey,
		HostKey:            m.Spec.SSHHostKey,
		HostKeyFingerprint: m.Status.SSHHostKeyFingerprint,
	}
}

// SSH reaches a host with OpenSSH: nixos-rebuild for applies, nixos-facter for facts.
// It is the fallback when the agent can't be reached, and the way the agent's TLS
// identity reaches hosts that already run NixOS.
type SSH struct {
	cfg    SSHConfig
	signer ssh.Signer
	pinned ssh.PublicKey

	mu       sync.Mutex
	seen     string
	seenType string
}

var _ Transport = (*SSH)(nil)

// HostKeyMismatchError says the host presented another key than the pinned or
// recorded one. It wraps ErrHostKeyMismatch.
type HostKeyMismatchError struct {
	Host string
	// Want is the pinned key's or the recorded fingerprint; Got the presented key's.
	Want, Got string
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("%s: host %s presented key %s, expected %s; if the host was reinstalled, clear status.sshHostKeyFingerprint or set spec.sshHostKey",
		ErrHostKeyMismatch, e.Host, e.Got, e.Want)
}

func (e *HostKeyMismatchError) Unwrap() error { return ErrHostKeyMismatch }

// NewSSH checks the configuration and parses the keys; it does not connect.
func NewSSH(cfg SSHConfig) (*SSH, error) {
	if cfg.Host == "" {
		return nil, errors.New("ssh: no host")
	}
	if cfg.Port == 0 {
		cfg.Port = 22
	}
	if cfg.User == "" {
		cfg.User = "root"
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 15 * time.Second
	}
	setDefault(&cfg.StateDir, DefaultSSHStateDir)
	setDefault(&cfg.AgentTLSDir, DefaultAgentTLSDir)
	setDefault(&cfg.ProfilePath, DefaultProfilePath)
	setDefault(&cfg.CurrentSystemLink, DefaultCurrentSystemLink)
	setDefault(&cfg.BootedSystemLink, DefaultBootedSystemLink)
	for _, p := range []string{cfg.StateDir, cfg.AgentTLSDir, cfg.ProfilePath, cfg.CurrentSystemLink, cfg.BootedSystemLink} {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("ssh: remote path %q is not absolute", p)
		}
	}
	signer, err := ssh.ParsePrivateKey(cfg.PrivateKey)
	if err != nil {
		// The parser's message never contains key material.
		return nil, fmt.Errorf("ssh: parse login key: %w", err)
	}
	t := &SSH{cfg: cfg, signer: signer}
	if cfg.HostKey != "" {
		t.pinned, _, _, _, err = ssh.ParseAuthorizedKey([]byte(cfg.HostKey))
		if err != nil {
			return nil, fmt.Errorf("ssh: parse pinned host key: %w", err)
		}
	} else if cfg.HostKeyFingerprint != "" && !strings.HasPrefix(cfg.HostKeyFingerprint, "SHA256:") {
		return nil, fmt.Errorf("ssh: recorded host key fingerprint %q is not SHA256:…", cfg.HostKeyFingerprint)
	}
	return t, nil
}

func setDefault(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

// HostKeyRecorded tells whether the host key is pinned (HostKey) or recorded
// (HostKeyFingerprint): a login would only confirm it.
func (s *SSH) HostKeyRecorded() bool { return s.cfg.HostKeyRecorded() }

// HostKeyRecorded tells whether the configuration pins (HostKey) or records
// (HostKeyFingerprint) the host key. It needs no login key: a Host tells it before
// reading the key's Secret.
func (c SSHConfig) HostKeyRecorded() bool {
	return c.HostKey != "" || c.HostKeyFingerprint != ""
}

// SeenHostKeyFingerprint is the SHA256 fingerprint of the host key presented on the
// last connection attempt ("" before any).
func (s *SSH) SeenHostKeyFingerprint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

func (s *SSH) checkHostKey(_ string, _ net.Addr, key ssh.PublicKey) error {
	fp := ssh.FingerprintSHA256(key)
	s.mu.Lock()
	s.seen, s.seenType = fp, key.Type()
	s.mu.Unlock()
	switch {
	case s.pinned != nil:
		if !bytes.Equal(key.Marshal(), s.pinned.Marshal()) {
			return &HostKeyMismatchError{Host: s.cfg.Host, Want: ssh.FingerprintSHA256(s.pinned), Got: fp}
		}
	case s.cfg.HostKeyFingerprint != "":
		if fp != s.cfg.HostKeyFingerprint {
			return &HostKeyMismatchError{Host: s.cfg.Host, Want: s.cfg.HostKeyFingerprint, Got: fp}
		}
	}
	// Nothing known yet: trust on first use; the caller records the fingerprint.
	return nil
}

func (s *SSH) addr() string { return net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port)) }

// preferredHostKeyAlgorithms is the order host keys are asked for when none is
// pinned, strongest first. x/crypto/ssh's default order puts ECDSA and RSA before
// ed25519, so a host with both would have its RSA key recorded on first contact.
// ssh-rsa (SHA-1 signatures) is left out: every OpenSSH since 7.2 signs with SHA-2.
var preferredHostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA521, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA256,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

// hostKeyFamilies are the key types a host may hold one key of each, as algorithm
// lists that make it present that key.
var hostKeyFamilies = [][]string{
	{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
	{ssh.KeyAlgoECDSA521, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA256},
	{ssh.KeyAlgoED25519},
}

// presents reports whether asking for algos can show a key of keyType (an RSA key's
// type is ssh-rsa whatever hash signs with it).
func presents(algos []string, keyType string) bool {
	return slices.Contains(algos, keyType) || keyType == ssh.KeyAlgoRSA && slices.Contains(algos, ssh.KeyAlgoRSASHA256)
}

// connect dials and authenticates. The connection is closed when ctx ends, which
// also ends every session on it.
//
// A recorded fingerprint may name a key of a weaker type than the one the host
// offers first (recorded by an older operator, or before the host got an ed25519
// key). The host then presented another key than the recorded one; it is asked again
// for each other key type, and is trusted if it proves it holds the recorded key.
// Only a host that presents no key matching the recording is a mismatch.
func (s *SSH) connect(ctx context.Context) (*sshConn, error) {
	if s.pinned != nil {
		// Ask for the pinned key's type, so a host with several keys shows that one.
		return s.dial(ctx, hostKeyAlgorithms(s.pinned.Type()))
	}
	c, err := s.dial(ctx, preferredHostKeyAlgorithms)
	var mismatch *HostKeyMismatchError
	if err == nil || s.cfg.HostKeyFingerprint == "" || !errors.As(err, &mismatch) {
		return c, err
	}
	s.mu.Lock()
	shownType := s.seenType
	s.mu.Unlock()
	for _, family := range hostKeyFamilies {
		if presents(family, shownType) {
			continue
		}
		// A host without a key of this type fails the handshake: no such key to match.
		if c, ferr := s.dial(ctx, family); ferr == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	s.mu.Lock()
	s.seen, s.seenType = mismatch.Got, shownType
	s.mu.Unlock()
	return nil, err
}

// dial connects asking the host for a key of one of algos.
func (s *SSH) dial(ctx context.Context, algos []string) (*sshConn, error) {
	cc := &ssh.ClientConfig{
		User:              s.cfg.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(s.signer)},
		HostKeyCallback:   s.checkHostKey,
		HostKeyAlgorithms: algos,
		Timeout:           s.cfg.DialTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", s.addr())
	if err != nil {
		return nil, fmt.Errorf("ssh dial %s: %w: %w", s.addr(), ErrUnreachable, err)
	}
	// The handshake has no context: a deadline bounds it, and a cancelled ctx closes it.
	_ = conn.SetDeadline(time.Now().Add(s.cfg.DialTimeout))
	stop := context.AfterFunc(dctx, func() { _ = conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, s.addr(), cc)
	stop()
	if err != nil {
		_ = conn.Close()
		var mismatch *HostKeyMismatchError
		switch {
		case errors.As(err, &mismatch):
			return nil, fmt.Errorf("ssh %s: %w", s.addr(), mismatch)
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, fmt.Errorf("ssh %s: login as %s with the Machine's key was refused: %w", s.addr(), s.cfg.User, ErrAuthFailed)
		default:
			return nil, fmt.Errorf("ssh handshake with %s: %w: %w", s.addr(), ErrUnreachable, err)
		}
	}
	_ = conn.SetDeadline(time.Time{})
	client := ssh.NewClient(c, chans, reqs)
	return &sshConn{Client: client, stop: context.AfterFunc(ctx, func() { _ = client.Close() })}, nil
}

// sshConn is a client whose connection closes when the context of connect ends.
type sshConn struct {
	*ssh.Client
	stop func() bool
}

// Close closes the connection and forgets the context hook, so a long-lived context
// does not collect one per connection.
func (c *sshConn) Close() error {
	c.stop()
	return c.Client.Close()
}

func hostKeyAlgorithms(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// privileged prefixes argv with `sudo -n --` for a non-root user. -n makes sudo fail
// at once instead of asking for a password, so a session can never hang on a prompt.
func (s *SSH) privileged(argv ...string) []string {
	if s.cfg.User == "root" {
		return argv
	}
	return append([]string{"sudo", "-n", "--"}, argv...)
}

// remoteRun is one command's run on the host.
type remoteRun struct {
	argv   []string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// run executes argv on the host. A non-zero exit is an *ssh.ExitError; a sudo that
// wants a password is ErrSudoPassword.
func (s *SSH) run(ctx context.Context, c *sshConn, r remoteRun) error {
	line, err := shellCommand(r.argv)
	if err != nil {
		return err
	}
	sess, err := c.NewSession()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("ssh session on %s: %w: %w", s.addr(), ErrUnreachable, err)
	}
	defer sess.Close()
	// Keep the start of stderr to recognise sudo's refusal.
	var errHead capBuffer
	sess.Stdin = r.stdin
	sess.Stdout = orDiscard(r.stdout)
	sess.Stderr = io.MultiWriter(orDiscard(r.stderr), &errHead)
	err = sess.Run(line)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var exit *ssh.ExitError
	if errors.As(err, &exit) && s.cfg.User != "root" && exit.ExitStatus() == 1 && sudoWantsPassword(errHead.String()) {
		return fmt.Errorf("sudo -n as %s on %s: %w: grant %s passwordless sudo (NOPASSWD) or log in as root",
			s.cfg.User, s.cfg.Host, ErrSudoPassword, s.cfg.User)
	}
	return err
}

func sudoWantsPassword(stderr string) bool {
	return strings.Contains(stderr, "a password is required") || strings.Contains(stderr, "a terminal is required")
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// output runs argv and returns its stdout (at most limit bytes).
func (s *SSH) output(ctx context.Context, c *sshConn, limit int64, argv ...string) ([]byte, error) {
	var out, errb capBuffer
	out.limit = limit
	err := s.run(ctx, c, remoteRun{argv: argv, stdout: &out, stderr: &errb})
	if err != nil {
		return nil, commandError(argv, err, errb.String())
	}
	if out.dropped {
		return nil, fmt.Errorf("%s: output larger than %d bytes", argv[0], limit)
	}
	return out.Bytes(), nil
}

// commandError adds the command and its stderr tail to a failure, unless it is one of
// the errors the controllers tell apart.
func commandError(argv []string, err error, stderr string) error {
	if errors.Is(err, ErrSudoPassword) || errors.Is(err, ErrUnreachable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if stderr = strings.TrimSpace(stderr); stderr != "" {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, stderr)
	}
	return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
}

// capBuffer keeps the first limit bytes written (4 KiB when limit is 0) and notes
// whether more came.
type capBuffer struct {
	bytes.Buffer
	limit   int64
	dropped bool
}

func (b *capBuffer) Write(p []byte) (int, error) {
	limit := b.limit
	if limit == 0 {
		limit = 4 << 10
	}
	room := limit - int64(b.Len())
	if int64(len(p)) > room {
		b.dropped = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}
