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
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/homystack/nio/testkit/certtest"
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

// agentHost is a running nio-agent with real Nix and real TLS on loopback.
type agentHost struct {
	addr string
	ca   *certtest.CA
	nix  *nixtest.Env
	log  *syncBuffer
}

var listenLine = regexp.MustCompile(`nio-agent listening.* addr=(\S+)`)

// startAgent runs nio-agent serving a certificate for Machine testNamespace/certName.
func startAgent(t *testing.T, ca *certtest.CA, certName string) *agentHost {
	t.Helper()
	bin := buildAgent(t)
	nix := nixtest.New(t)
	dir := t.TempDir()
	certPEM, keyPEM := ca.MachineServer(t, testNamespace, certName)
	tlsDir := certtest.WriteFiles(t, filepath.Join(dir, "tls"), ca.CertPEM, certPEM, keyPEM)
	if err := os.MkdirAll(filepath.Join(dir, "profiles"), 0o755); err != nil {
		t.Fatal(err)
	}
	facter := filepath.Join(dir, "nixos-facter")
	report, err := filepath.Abs("testdata/facter-kvm-vps.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(facter, []byte("#!/bin/sh\nexec cat "+report+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--listen", "127.0.0.1:0",
		"--tls-dir", tlsDir,
		"--state-dir", filepath.Join(dir, "state"),
		"--profile", filepath.Join(dir, "profiles", "system"),
		"--current-system-link", nix.CurrentSystemLink(),
		"--booted-system-link", filepath.Join(dir, "booted-system"),
		"--systemd-run=false",
		"--facter-path", facter,
		"--log-level", "debug",
	)
	cmd.Env = nix.Environ()
	// Its own process group: cleanup ends the agent and the nix builds it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &agentHost{ca: ca, nix: nix, log: &syncBuffer{}}
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
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("nio-agent log:\n%s", h.log.String())
		}
	})
	select {
	case h.addr = <-addr:
	case <-done:
		t.Fatalf("nio-agent exited before listening:\n%s", h.log.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("nio-agent did not listen within 30s:\n%s", h.log.String())
	}
	return h
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
