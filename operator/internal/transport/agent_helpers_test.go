package transport

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/facterfixture"
	"github.com/homystack/nio/testkit/nixtest"
)

const testNamespace = "fleet"

var (
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
	agentBinDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if agentBinDir != "" {
		_ = os.RemoveAll(agentBinDir)
	}
	os.Exit(code)
}

// buildAgent builds the real nio-agent once per test binary (workspace mode).
func buildAgent(t *testing.T) string {
	t.Helper()
	agentBinOnce.Do(func() {
		agentBinDir, agentBinErr = os.MkdirTemp("", "nio-agent-bin-")
		if agentBinErr != nil {
			return
		}
		agentBin = filepath.Join(agentBinDir, "nio-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "github.com/homystack/nio/agent/cmd/nio-agent")
		out, err := cmd.CombinedOutput()
		if err != nil {
			agentBinErr = &buildError{err: err, out: string(out)}
		}
	})
	if agentBinErr != nil {
		t.Fatalf("build nio-agent: %v", agentBinErr)
	}
	return agentBin
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// agentHost is a running nio-agent with real Nix and real TLS on loopback. kill and
// restart stand for SIGKILL and systemd's Restart=on-failure: same state dir, same
// port.
type agentHost struct {
	addr string
	ca   *certtest.CA
	nix  *nixtest.Env
	log  *syncBuffer
	args []string // everything but --listen

	mu   sync.Mutex
	proc *os.Process
	done chan struct{} // closed when the current process exited
}

var listenLine = regexp.MustCompile(`nio-agent listening.* addr=(\S+)`)

// startAgent runs nio-agent serving a certificate for Machine testNamespace/certName.
func startAgent(t *testing.T, ca *certtest.CA, certName string) *agentHost {
	t.Helper()
	nix := nixtest.New(t)
	dir := t.TempDir()
	certPEM, keyPEM := ca.MachineServer(t, testNamespace, certName)
	tlsDir := certtest.WriteFiles(t, filepath.Join(dir, "tls"), ca.CertPEM, certPEM, keyPEM)
	if err := os.MkdirAll(filepath.Join(dir, "profiles"), 0o755); err != nil {
		t.Fatal(err)
	}
	facter := filepath.Join(dir, "nixos-facter")
	report := facterfixture.WriteFile(t)
	if err := os.WriteFile(facter, []byte("#!/bin/sh\nexec cat "+report+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := &agentHost{ca: ca, nix: nix, log: &syncBuffer{}, args: []string{
		"--tls-dir", tlsDir,
		"--state-dir", filepath.Join(dir, "state"),
		"--profile", filepath.Join(dir, "profiles", "system"),
		"--current-system-link", nix.CurrentSystemLink(),
		"--booted-system-link", filepath.Join(dir, "booted-system"),
		"--systemd-run=false",
		"--facter-path", facter,
		"--log-level", "debug",
		"--secrets-dir", filepath.Join(dir, "run", "nio-secrets"),
	}}
	t.Cleanup(func() {
		h.kill()
		if t.Failed() {
			t.Logf("nio-agent log:\n%s", h.log.String())
		}
	})
	if err := h.launch(buildAgent(t), "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	return h
}

// launch starts the agent process and waits until it listens.
func (h *agentHost) launch(bin, listen string) error {
	cmd := exec.Command(bin, append([]string{"--listen", listen}, h.args...)...)
	cmd.Env = h.nix.Environ()
	// Its own process group: kill ends the agent and the nix builds it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	addr := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			h.log.WriteString(sc.Text() + "\n")
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- strings.Trim(m[1], `"`):
				default:
				}
			}
		}
		_ = cmd.Wait()
	}()
	h.mu.Lock()
	h.proc, h.done = cmd.Process, done
	h.mu.Unlock()
	select {
	case a := <-addr:
		h.mu.Lock()
		h.addr = a
		h.mu.Unlock()
		return nil
	case <-done:
		return fmt.Errorf("nio-agent exited before listening:\n%s", h.log.String())
	case <-time.After(30 * time.Second):
		return fmt.Errorf("nio-agent did not listen within 30s:\n%s", h.log.String())
	}
}

// kill SIGKILLs the agent's process group and waits for it to be gone.
func (h *agentHost) kill() {
	h.mu.Lock()
	proc, done := h.proc, h.done
	h.mu.Unlock()
	if proc == nil {
		return
	}
	_ = syscall.Kill(-proc.Pid, syscall.SIGKILL)
	<-done
}

// restart starts the agent again after kill, on the same address and state.
func (h *agentHost) restart(t *testing.T) error {
	h.log.WriteString("--- restart ---\n")
	h.mu.Lock()
	addr := h.addr
	h.mu.Unlock()
	return h.launch(buildAgent(t), addr)
}

// dialCounter is an AgentConfig.Dialer that keeps every connection, so a test can
// count them and break one.
type dialCounter struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (d *dialCounter) dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err == nil {
		d.mu.Lock()
		d.conns = append(d.conns, c)
		d.mu.Unlock()
	}
	return c, err
}

func (d *dialCounter) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

func (d *dialCounter) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		_ = c.Close()
	}
}

// connCounter forwards TCP connections to a target and counts them: accepted, the
// ones the target accepted too (served), and the ones open now.
type connCounter struct {
	ln                     net.Listener
	accepted, served, open atomic.Int32
}

func countConnections(t *testing.T, target string) *connCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	l := &connCounter{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				l.served.Add(1)
				l.open.Add(1)
				defer l.open.Add(-1)
				// Either side ending ends both.
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(s, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, s); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return l
}

func (l *connCounter) addr() string { return l.ln.Addr().String() }

func (l *connCounter) port() int { return l.ln.Addr().(*net.TCPAddr).Port }

// agentTransport dials h as Machine testNamespace/name with the operator identity.
func (h *agentHost) agentTransport(t *testing.T, name string, d *dialCounter) *Agent {
	t.Helper()
	client := h.ca.OperatorClient(t)
	cfg := AgentConfig{
		Address:   h.addr,
		Namespace: testNamespace,
		Name:      name,
		RootCAs:   h.ca.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &client, nil
		},
		ReconnectTimeout: 30 * time.Second,
	}
	if d != nil {
		cfg.Dialer = d.dial
	}
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// dirSource packs a directory into a tar.gz Source.
func dirSource(t *testing.T, dir string) Source {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return finishSource(t, &buf, tw, gz)
}

// uniqueVersion makes a fixture's store path new, so Nix really builds it.
func uniqueVersion(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) WriteString(p string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
