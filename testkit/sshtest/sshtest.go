// Package sshtest runs a real OpenSSH sshd (Debian's /usr/sbin/sshd) for a test: its
// own host key, config and authorized key, a session PATH that puts the test's
// stand-in commands (nixos-rebuild, sudo, systemctl, …) first, and a verbose log.
//
// Run as root, sshd lives in a network namespace of its own, reached over a veth
// pair on a /30 — the test's own host, with its own address. Otherwise it listens on
// loopback. Everything it starts is stopped by PID in t.Cleanup, and the namespace is
// deleted, also when the test fails.
package sshtest

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHDPath is the OpenSSH server binary the tests run.
const SSHDPath = "/usr/sbin/sshd"

// Options shape the server. The zero value logs in as the current user (root when the
// test runs as root).
type Options struct {
	// User is the login user. When the test runs as root and User is not root, the
	// user is added to a copy of /etc/passwd that only sshd and its sessions see (a
	// private mount namespace), so nothing on the machine changes.
	User string
	// RSAHostKey gives sshd an RSA host key besides the ed25519 one (HostKey stays
	// the ed25519 key; RSAHostKey returns the other), as many hosts have both.
	RSAHostKey bool
}

// Server is one running sshd.
type Server struct {
	// Host is the address to dial: the namespace's veth address as root, else 127.0.0.1.
	Host string
	// Port sshd listens on.
	Port int
	// User is the login user.
	User string
	// ClientKeyPEM is the OpenSSH private key authorized to log in as User.
	ClientKeyPEM []byte
	// ClientSigner is ClientKeyPEM parsed.
	ClientSigner ssh.Signer
	// BinDir is first on the session PATH: stand-in commands go here (WriteStandIn).
	BinDir string
	// Dir is a scratch directory the login user can read and write (state dirs,
	// recordings); it is removed at cleanup.
	Dir string
	// AuthorizedKeysPath is the file sshd reads the authorized key from on every
	// login; emptying it locks the client out (a "new system" that broke access).
	AuthorizedKeysPath string
	// LogPath is sshd's verbose log.
	LogPath string
	// InNamespace is true when sshd runs in a network namespace of its own.
	InNamespace bool

	t        testing.TB
	root     string
	cfgPath  string
	keyPath  string
	rsaPath  string // "" without Options.RSAHostKey
	netns    string
	launcher []string // argv prefix that starts sshd (namespace, mount namespace)

	mu         sync.Mutex
	hostKey    ssh.PublicKey
	rsaHostKey ssh.PublicKey
	cmd        *exec.Cmd
	done       chan struct{}
}

// Start runs sshd for the test and stops it at cleanup.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	me, err := user.Current()
	if err != nil {
		t.Fatalf("sshtest: current user: %v", err)
	}
	isRoot := os.Geteuid() == 0
	if o.User == "" {
		o.User = me.Username
	}
	if !isRoot && o.User != me.Username {
		t.Fatalf("sshtest: only root can log in as another user (%q)", o.User)
	}

	// Not t.TempDir: a non-root login user must be able to traverse it, and t.TempDir's
	// parents are 0700.
	root, err := os.MkdirTemp("", "sshtest-")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	s := &Server{
		t:       t,
		root:    root,
		User:    o.User,
		BinDir:  filepath.Join(root, "bin"),
		Dir:     filepath.Join(root, "scratch"),
		LogPath: filepath.Join(root, "sshd.log"),
		cfgPath: filepath.Join(root, "sshd_config"),
		keyPath: filepath.Join(root, "ssh_host_ed25519_key"),
	}
	if o.RSAHostKey {
		s.rsaPath = filepath.Join(root, "ssh_host_rsa_key")
	}
	for _, d := range []string{s.BinDir, s.Dir, filepath.Join(root, "home")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
	}

	s.ClientKeyPEM, s.ClientSigner = newKey(t)
	authorized := filepath.Join(root, "authorized_keys")
	s.AuthorizedKeysPath = authorized
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(s.ClientSigner.PublicKey()), 0o644); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	s.writeHostKey(t)

	if isRoot {
		// sshd insists on its privilege separation directory; the package's
		// tmpfiles.d entry makes it at boot, which a container may not have run.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
		s.maskShellStartup(t)
		if o.User != "root" {
			s.addUser(t, o.User)
		}
		s.setupNamespace(t)
	} else {
		s.Host = "127.0.0.1"
		s.Port = freePort(t)
	}

	hostKeys := "HostKey " + s.keyPath
	if s.rsaPath != "" {
		// Listed first: which key a client sees must be the client's choice.
		hostKeys = "HostKey " + s.rsaPath + "\n" + hostKeys
	}
	cfg := strings.Join([]string{
		"Port " + strconv.Itoa(s.Port),
		"ListenAddress " + s.Host,
		hostKeys,
		"AuthorizedKeysFile " + authorized,
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PermitRootLogin prohibit-password",
		"AllowUsers " + o.User,
		"PidFile none",
		"LogLevel VERBOSE",
		"Subsystem sftp internal-sftp",
		// Stand-ins in BinDir shadow the real commands for every session.
		"SetEnv PATH=" + s.BinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"",
	}, "\n")
	if err := os.WriteFile(s.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			if b, err := os.ReadFile(s.LogPath); err == nil {
				t.Logf("sshtest: sshd log:\n%s", b)
			}
		}
	})
	s.start(t)
	return s
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// HostKey is the public host key sshd presents now.
func (s *Server) HostKey() ssh.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hostKey
}

// RSAHostKey is the RSA host key sshd also presents (Options.RSAHostKey), else nil.
func (s *Server) RSAHostKey() ssh.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rsaHostKey
}

// HostKeyAuthorized is HostKey in authorized_keys form (`ssh-ed25519 AAAA…`), as a
// Machine's spec.sshHostKey holds it.
func (s *Server) HostKeyAuthorized() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.HostKey())))
}

// HostKeyFingerprint is HostKey's SHA256 fingerprint.
func (s *Server) HostKeyFingerprint() string { return ssh.FingerprintSHA256(s.HostKey()) }

// RotateHostKey restarts sshd with newly generated host keys (every type it has), as
// a reinstalled or impersonated host would present.
func (s *Server) RotateHostKey(t testing.TB) {
	t.Helper()
	s.stop()
	s.writeHostKey(t)
	s.start(t)
}

// WriteStandIn writes an executable shell script named name into BinDir, so sessions
// run it instead of the real command.
func (s *Server) WriteStandIn(t testing.TB, name, script string) string {
	t.Helper()
	p := filepath.Join(s.BinDir, name)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatalf("sshtest: stand-in %s: %v", name, err)
	}
	return p
}

// ClientConfig is a client configuration that logs in as User and pins the current
// host key, for tests that need a plain session.
func (s *Server) ClientConfig() *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(s.ClientSigner)},
		HostKeyCallback: ssh.FixedHostKey(s.HostKey()),
		Timeout:         10 * time.Second,
	}
}

func (s *Server) writeHostKey(t testing.TB) {
	t.Helper()
	pemBytes, signer := newKey(t)
	if err := os.WriteFile(s.keyPath, pemBytes, 0o600); err != nil {
		t.Fatalf("sshtest: host key: %v", err)
	}
	s.mu.Lock()
	s.hostKey = signer.PublicKey()
	s.mu.Unlock()
	if s.rsaPath == "" {
		return
	}
	pemBytes, signer = newRSAKey(t)
	if err := os.WriteFile(s.rsaPath, pemBytes, 0o600); err != nil {
		t.Fatalf("sshtest: RSA host key: %v", err)
	}
	s.mu.Lock()
	s.rsaHostKey = signer.PublicKey()
	s.mu.Unlock()
}

// start runs sshd in the foreground and returns once it listens: sshd says
// "Server listening on" on stderr, which is the signal waited for.
func (s *Server) start(t testing.TB) {
	t.Helper()
	logFile, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	argv := append(append([]string{}, s.launcher...), SSHDPath, "-D", "-e", "-f", s.cfgPath)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("sshtest: start sshd: %v", err)
	}
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			if !signalled && strings.Contains(line, "Server listening on") {
				signalled = true
				close(ready)
			}
		}
		_, _ = io.Copy(logFile, stderr)
		_ = cmd.Wait()
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	select {
	case <-ready:
	case <-done:
		b, _ := os.ReadFile(s.LogPath)
		t.Fatalf("sshtest: sshd exited before listening:\n%s", b)
	case <-time.After(30 * time.Second):
		b, _ := os.ReadFile(s.LogPath)
		t.Fatalf("sshtest: sshd did not listen within 30s:\n%s", b)
	}
}

// stop ends sshd and every session it forked: they share its process group.
func (s *Server) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// setupNamespace creates a network namespace with a veth pair on a random /30 of
// 10.231.0.0/16: the host side gets .1, the namespace (sshd's host) .2.
func (s *Server) setupNamespace(t testing.TB) {
	t.Helper()
	n, err := rand.Int(rand.Reader, big.NewInt(1<<14))
	if err != nil {
		t.Fatal(err)
	}
	idx := int(n.Int64())
	base := idx * 4
	hostIP := fmt.Sprintf("10.231.%d.%d", base/256, base%256+1)
	nsIP := fmt.Sprintf("10.231.%d.%d", base/256, base%256+2)
	suffix := strconv.FormatInt(int64(os.Getpid()%100000), 36) + strconv.FormatInt(int64(idx), 36)
	s.netns = "nio-sshtest-" + suffix
	hostIf, nsIf := "nst"+suffix+"h", "nst"+suffix+"n"

	run(t, "ip", "netns", "add", s.netns)
	t.Cleanup(func() { s.deleteNamespace() })
	run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", s.netns)
	run(t, "ip", "addr", "add", hostIP+"/30", "dev", hostIf)
	run(t, "ip", "link", "set", hostIf, "up")
	run(t, "ip", "-n", s.netns, "addr", "add", nsIP+"/30", "dev", nsIf)
	run(t, "ip", "-n", s.netns, "link", "set", nsIf, "up")
	run(t, "ip", "-n", s.netns, "link", "set", "lo", "up")

	s.Host, s.Port, s.InNamespace = nsIP, 2200+idx%1000, true
	s.launcher = append([]string{"ip", "netns", "exec", s.netns}, s.launcher...)
}

// deleteNamespace stops whatever still runs in the namespace (only this test's
// processes can be there) and deletes it, which also removes the veth pair.
func (s *Server) deleteNamespace() {
	s.stop()
	out, _ := exec.Command("ip", "netns", "pids", s.netns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if out, err := exec.Command("ip", "netns", "del", s.netns).CombinedOutput(); err != nil {
		s.t.Errorf("sshtest: ip netns del %s: %v: %s", s.netns, err, out)
	}
}

// addUser makes a login user that exists only for sshd: a copy of /etc/passwd with
// the user appended is bind-mounted over /etc/passwd in a private mount namespace.
func (s *Server) addUser(t testing.TB, name string) {
	t.Helper()
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	if bytes.Contains(passwd, []byte("\n"+name+":")) || bytes.HasPrefix(passwd, []byte(name+":")) {
		t.Fatalf("sshtest: user %q already exists", name)
	}
	home := filepath.Join(s.root, "home")
	const uid = 64123
	line := fmt.Sprintf("%s:x:%d:65534:sshtest user:%s:/bin/sh\n", name, uid, home)
	if len(passwd) > 0 && passwd[len(passwd)-1] != '\n' {
		passwd = append(passwd, '\n')
	}
	copyPath := filepath.Join(s.root, "passwd")
	if err := os.WriteFile(copyPath, append(passwd, line...), 0o644); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	for _, d := range []string{home, s.Dir} {
		if err := os.Chown(d, uid, 65534); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
	}
	// The script takes its paths as arguments: nothing is spliced into shell text.
	launch := filepath.Join(s.root, "with-passwd.sh")
	script := "#!/bin/sh\nset -e\nmount --bind \"$1\" /etc/passwd\nshift\nexec \"$@\"\n"
	if err := os.WriteFile(launch, []byte(script), 0o755); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	s.launcher = append(s.launcher, "unshare", "--mount", "--propagation", "private", launch, copyPath)
}

// shellStartupFiles are what a login user's shell may read for an ssh command (Debian's
// bash reads ~/.bashrc when sshd runs it). The machine's own — a pyenv hook, say, that
// takes a lock and prints when the lock is stale — are not the test host's.
var shellStartupFiles = []string{"/root/.bashrc", "/root/.profile", "/root/.bash_profile", "/root/.bash_login"}

// maskShellStartup starts sshd in a private mount namespace where root's shell
// startup files are empty, so sessions run the same whatever the machine's are.
func (s *Server) maskShellStartup(t testing.TB) {
	t.Helper()
	launch := filepath.Join(s.root, "mask-shell-startup.sh")
	script := "#!/bin/sh\nset -e\nfor f in \"$@\"; do\n\t[ \"$f\" = -- ] && break\n\tif [ -e \"$f\" ]; then mount --bind /dev/null \"$f\"; fi\ndone\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n"
	if err := os.WriteFile(launch, []byte(script), 0o755); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	s.launcher = append(s.launcher, "unshare", "--mount", "--propagation", "private", launch)
	s.launcher = append(append(s.launcher, shellStartupFiles...), "--")
}

func newKey(t testing.TB) ([]byte, ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshtest: key: %v", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatalf("sshtest: marshal key: %v", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("sshtest: signer: %v", err)
	}
	return pem.EncodeToMemory(block), signer
}

func newRSAKey(t testing.TB) ([]byte, ssh.Signer) {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("sshtest: RSA key: %v", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatalf("sshtest: marshal RSA key: %v", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("sshtest: RSA signer: %v", err)
	}
	return pem.EncodeToMemory(block), signer
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshtest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func run(t testing.TB, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("sshtest: %s: %v: %s", strings.Join(argv, " "), err, out)
	}
}
