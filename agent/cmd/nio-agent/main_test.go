package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// The test binary doubles as nio-agent: with this variable set it runs main.
const runMainEnv = "NIO_AGENT_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestFlagsDefaultsMatchTheContract(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := options{listen: ":9443", tlsDir: "/var/lib/nio-agent/tls", stateDir: "/var/lib/nio-agent",
		profile: "/nix/var/nix/profiles/system", currentLink: "/run/current-system", bootedLink: "/run/booted-system",
		facterPath: "nixos-facter", logFormat: "text", logLevel: "info", systemdRun: true, maxSourceBytes: 1 << 30,
		secretsDir: "/run/nio-secrets", handshakeLogLimit: 10, handshakeLogWindow: time.Minute}
	if *o != want {
		t.Errorf("defaults %+v, want %+v", *o, want)
	}
	if _, err := parseFlags([]string{"--max-source-bytes=0"}); err == nil {
		t.Error("a zero size cap was accepted")
	}
	if _, err := newLogger("yaml", "info"); err == nil {
		t.Error("--log-format yaml was accepted")
	}
}

// With --systemd-run (the NixOS unit) command health checks leave the sandbox the
// way activation and nixos-facter do; without it they are the agent's children.
func TestSystemdRunAppliesToHealthChecksAsToFacter(t *testing.T) {
	for _, args := range [][]string{nil, {"--systemd-run=false"}} {
		o, err := parseFlags(args)
		if err != nil {
			t.Fatal(err)
		}
		cfg := serverConfig(o, nil, nil, nil, nil)
		if cfg.HealthSystemdRun != o.systemdRun || cfg.FacterSystemdRun != o.systemdRun {
			t.Errorf("flags %q: health systemd-run %v, facter %v, want both %v", args, cfg.HealthSystemdRun, cfg.FacterSystemdRun, o.systemdRun)
		}
	}
}

type agentProcess struct {
	cmd     *exec.Cmd
	addr    string
	ca      *certtest.CA
	logDone chan struct{} // closed when stderr reaches EOF
	once    sync.Once
	exitErr error

	mu  sync.Mutex
	log []string // stderr lines so far
}

// wait reaps the process once its log is read to the end (Wait before that would
// close the pipe under the reader).
func (a *agentProcess) wait() error {
	a.once.Do(func() {
		<-a.logDone
		a.exitErr = a.cmd.Wait()
	})
	return a.exitErr
}

// startAgent runs nio-agent with real TLS and real Nix on a scratch profile, and waits
// for its "listening" log line. args are added to the command line.
func startAgent(t *testing.T, env *nixtest.Env, args ...string) *agentProcess {
	t.Helper()
	dir := t.TempDir()
	ca := certtest.NewCA(t)
	crt, key := ca.MachineServer(t, "prod", "web-1")
	tlsDir := certtest.WriteFiles(t, filepath.Join(dir, "tls"), ca.CertPEM, crt, key)
	if err := os.MkdirAll(filepath.Join(dir, "profiles"), 0o755); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{
		"--listen=127.0.0.1:0", "--tls-dir=" + tlsDir, "--state-dir=" + filepath.Join(dir, "state"),
		"--profile=" + filepath.Join(dir, "profiles", "system"), "--current-system-link=" + env.CurrentSystemLink(),
		"--booted-system-link=" + filepath.Join(dir, "booted"), "--systemd-run=false", "--log-format=json"}, args...)
	cmd := exec.Command(os.Args[0], argv...)
	cmd.Env = append(env.Environ(), runMainEnv+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProcess{cmd: cmd, ca: ca, logDone: make(chan struct{})}
	t.Cleanup(func() { cmd.Process.Kill(); a.wait() })
	addr := make(chan string, 1)
	go func() {
		defer close(a.logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "nio-agent listening" {
				addr <- rec.Addr
			}
			a.mu.Lock()
			a.log = append(a.log, sc.Text())
			a.mu.Unlock()
			t.Log(sc.Text())
		}
	}()
	select {
	case a.addr = <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("nio-agent did not start listening")
	}
	return nil
}

func (a *agentProcess) client(t *testing.T) agentv1.AgentServiceClient {
	t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: a.ca.Pool(),
		ServerName: identity.MachineDNSName("prod", "web-1"), Certificates: []tls.Certificate{a.ca.OperatorClient(t)}}
	conn, err := grpc.NewClient("passthrough:///"+a.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentServiceClient(conn)
}

func tarGz(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(body)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// startApply opens an Apply stream for a switch of the flake in dir and sends the
// source when asked; events arrive on the returned channel, which closes at the end.
func startApply(t *testing.T, c agentv1.AgentServiceClient, id, dir string) (<-chan *agentv1.ApplyResponse, <-chan error) {
	t.Helper()
	arch := tarGz(t, dir)
	sum := sha256.Sum256(arch)
	st, err := c.Apply(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	err = st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Header{Header: &agentv1.ApplyHeader{
		OperationId: id, Action: agentv1.Action_ACTION_SWITCH,
		Target:       &agentv1.ApplyHeader_Flake{Flake: &agentv1.FlakeTarget{Dir: ".", Attr: "worker"}},
		SourceDigest: "sha256:" + hex.EncodeToString(sum[:]), SourceSize: int64(len(arch)),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	events, errc := make(chan *agentv1.ApplyResponse, 1000), make(chan error, 1)
	go func() {
		defer close(events)
		for {
			ev, err := st.Recv()
			if err == io.EOF {
				errc <- nil
				return
			}
			if err != nil {
				errc <- err
				return
			}
			if ev.GetNeedSource() != nil {
				st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Chunk{Chunk: &agentv1.SourceChunk{Data: arch}}})
				st.CloseSend()
			}
			events <- ev
		}
	}()
	return events, errc
}

func TestSIGTERMWaitsForTheRunningOperationAndRefusesNewOnes(t *testing.T) {
	env := nixtest.New(t)
	agent := startAgent(t, env)
	c := agent.client(t)

	if st, err := c.Status(context.Background(), &agentv1.StatusRequest{}); err != nil || st.GetBusy() {
		t.Fatalf("status before: %v %v", st, err)
	}
	slow := nixtest.CopyFlake(t, "sleep", map[string]string{
		nixtest.VarSleep: "2", nixtest.VarVersion: fmt.Sprintf("drain-%d", time.Now().UnixNano()),
	})
	events, errc := startApply(t, c, "op-slow", slow)
	for ev := range events {
		if ev.GetPhase().GetPhase() == agentv1.Phase_PHASE_BUILDING {
			break
		}
	}
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	// Draining: a new operation is refused while the running one goes on. The
	// signal is asynchronous, so ask until the agent says it is shutting down.
	var refused error
	for {
		other, otherErr := startApply(t, c, "op-new", nixtest.CopyFlake(t, "basic", nil))
		for range other {
		}
		if refused = <-otherErr; status.Code(refused) != codes.Aborted {
			break
		}
	}
	if status.Code(refused) != codes.Unavailable {
		t.Errorf("a new operation during shutdown: %v, want UNAVAILABLE", refused)
	}

	var result *agentv1.ApplyResult
	for ev := range events {
		if r := ev.GetResult(); r != nil {
			result = r
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("the running operation's stream broke: %v", err)
	}
	if result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED || result.GetGeneration() != 1 {
		t.Fatalf("result %v", result)
	}
	done := make(chan error, 1)
	go func() { done <- agent.wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("nio-agent exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nio-agent did not exit after its operation finished")
	}
	if cur, _ := os.Readlink(env.CurrentSystemLink()); cur != result.GetStorePath() {
		t.Errorf("current system %s, want %s", cur, result.GetStorePath())
	}
}
