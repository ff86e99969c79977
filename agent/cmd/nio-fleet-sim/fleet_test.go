package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/testkit/certtest"
)

const ns = "bench"

type simFleet struct {
	ca     *certtest.CA
	ready  Ready
	client tls.Certificate
}

// startSim runs the simulator in-process for n machines, each with its own server
// certificate, and waits until it has written its ready file.
func startSim(t *testing.T, n int, buildTime time.Duration, extraArgs ...string) *simFleet {
	t.Helper()
	dir := t.TempDir()
	ca := certtest.NewCA(t)
	var m Manifest
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		crt, key := ca.MachineServer(t, ns, name)
		tlsDir := certtest.WriteFiles(t, filepath.Join(dir, "tls", name), ca.CertPEM, crt, key)
		m.Machines = append(m.Machines, ManifestMachine{Namespace: ns, Name: name, TLSDir: tlsDir})
	}
	data, _ := json.Marshal(m)
	manifest := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(manifest, data, 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags(append([]string{"-manifest", manifest, "-ready", filepath.Join(dir, "ready.json"),
		"-state-dir", filepath.Join(dir, "state"), "-build-time", buildTime.String()}, extraArgs...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	readyCh, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- run(ctx, o, slog.New(slog.DiscardHandler), func() { close(readyCh) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case <-readyCh:
	case err := <-done:
		t.Fatalf("simulator stopped before it was ready: %v", err)
	}
	f := &simFleet{ca: ca, client: ca.OperatorClient(t)}
	data, err = os.ReadFile(filepath.Join(dir, "ready.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &f.ready); err != nil {
		t.Fatal(err)
	}
	if len(f.ready.Machines) != n {
		t.Fatalf("ready file lists %d machines, want %d", len(f.ready.Machines), n)
	}
	return f
}

// dial opens a new mTLS connection to machine name's agent, verifying serverName.
func (f *simFleet) dial(t *testing.T, name, serverName string) agentv1.AgentServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+f.ready.Machines[ns+"/"+name], grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: f.ca.Pool(), ServerName: serverName, Certificates: []tls.Certificate{f.client},
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return agentv1.NewAgentServiceClient(cc)
}

func (f *simFleet) stats(t *testing.T) Stats {
	t.Helper()
	resp, err := http.Get("http://" + f.ready.Stats + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s Stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// sourceArchive is a one-file tar.gz and its digest.
func sourceArchive(t *testing.T, content string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "flake.nix", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), "sha256:" + hex.EncodeToString(sum[:])
}

// apply runs one switch with magic rollback the way the operator does: the source
// when asked, Confirm over a new connection when the agent awaits it.
func (f *simFleet) apply(t *testing.T, name, opID string, archive []byte, digest string) *agentv1.ApplyResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dns := identity.MachineDNSName(ns, name)
	// The operator waits for its Confirm before it calls the apply done.
	var confirming sync.WaitGroup
	defer confirming.Wait()
	stream, err := f.dial(t, name, dns).Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Header{Header: &agentv1.ApplyHeader{
		OperationId: opID, Commit: "c0ffee", SourceDigest: digest, SourceSize: int64(len(archive)),
		Action: agentv1.Action_ACTION_SWITCH, Target: &agentv1.ApplyHeader_Flake{Flake: &agentv1.FlakeTarget{Dir: ".", Attr: "sim"}},
		ConfirmTimeout: durationpb.New(30 * time.Second),
	}}}); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("%s: apply stream: %v", name, err)
		}
		switch ev := resp.GetEvent().(type) {
		case *agentv1.ApplyResponse_NeedSource:
			if err := stream.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Chunk{Chunk: &agentv1.SourceChunk{Data: archive}}}); err != nil {
				t.Fatal(err)
			}
		case *agentv1.ApplyResponse_Phase:
			if ev.Phase.GetPhase() == agentv1.Phase_PHASE_AWAITING_CONFIRM {
				// Confirm answers when the operation has ended, which this stream
				// reports: it must run beside the stream.
				confirming.Add(1)
				go func() {
					defer confirming.Done()
					if _, err := f.dial(t, name, dns).Confirm(ctx, &agentv1.ConfirmRequest{OperationId: opID}); err != nil {
						t.Errorf("%s: confirm: %v", name, err)
					}
				}()
			}
		case *agentv1.ApplyResponse_Result:
			return ev.Result
		}
	}
}

func TestFleetSimAppliesWithConfirmOverRealMTLS(t *testing.T) {
	const n = 3
	f := startSim(t, n, 20*time.Millisecond)
	archive, digest := sourceArchive(t, "{ outputs = { self }: { }; }\n")
	paths := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		res := f.apply(t, name, "op-1-"+name, archive, digest)
		if res.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED || res.GetRolledBack() {
			t.Fatalf("%s: outcome %v (%s), want SUCCEEDED", name, res.GetOutcome(), res.GetMessage())
		}
		if res.GetGeneration() != 1 || res.GetStorePath() == "" || res.GetCurrentSystem() != res.GetStorePath() {
			t.Fatalf("%s: generation %d, store path %q, current %q", name, res.GetGeneration(), res.GetStorePath(), res.GetCurrentSystem())
		}
		paths[res.GetStorePath()] = name
	}
	if len(paths) != 1 {
		t.Fatalf("one source built %d different systems: %v", len(paths), paths)
	}

	// Same digest again on m0: the agent holds the source, none is sent.
	res := f.apply(t, "m0", "op-2-m0", archive, digest)
	if res.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED || res.GetGeneration() != 2 {
		t.Fatalf("re-apply: outcome %v generation %d", res.GetOutcome(), res.GetGeneration())
	}
	// A changed source is a new system.
	archive2, digest2 := sourceArchive(t, "{ outputs = { self }: { changed = true; }; }\n")
	res2 := f.apply(t, "m1", "op-2-m1", archive2, digest2)
	if _, seen := paths[res2.GetStorePath()]; seen || res2.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("changed source: outcome %v, store path %q not new", res2.GetOutcome(), res2.GetStorePath())
	}

	s := f.stats(t)
	m0, m1, m2 := s.Machines[ns+"/m0"], s.Machines[ns+"/m1"], s.Machines[ns+"/m2"]
	if m0 == nil || m1 == nil || m2 == nil {
		t.Fatalf("stats lack machines: %v", s.Machines)
	}
	if m0.SourceBytes != int64(len(archive)) || len(m0.ApplyHeaders) != 2 || m0.Results != 2 || m0.Confirms != 2 || m0.Builds != 2 || m0.Activations != 2 {
		t.Fatalf("m0 stats %+v: want the source once, 2 applies, results, confirms, builds and activations", *m0)
	}
	if m1.SourceBytes != int64(len(archive)+len(archive2)) || m2.SourceBytes != int64(len(archive)) || m2.Results != 1 {
		t.Fatalf("m1 %+v, m2 %+v: source bytes not counted per machine", *m1, *m2)
	}
}

func TestFleetSimServesEachMachineItsOwnCertificate(t *testing.T) {
	f := startSim(t, 2, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.dial(t, "m0", identity.MachineDNSName(ns, "m0")).Status(ctx, &agentv1.StatusRequest{}); err != nil {
		t.Fatalf("status of m0 under its own name: %v", err)
	}
	// m1's listener must not pass for m0: the operator checks the name.
	_, err := f.dial(t, "m1", identity.MachineDNSName(ns, "m0")).Status(ctx, &agentv1.StatusRequest{})
	if err == nil {
		t.Fatal("m1's agent answered as m0")
	}
}

func TestFleetSimRefusesNonLoopbackListenHost(t *testing.T) {
	for _, host := range []string{"0.0.0.0", "192.0.2.1", "example.org"} {
		if _, err := parseFlags([]string{"-manifest", "m", "-ready", "r", "-state-dir", "s", "-listen-host", host}); err == nil {
			t.Errorf("-listen-host %s accepted: simulated agents must stay on loopback", host)
		}
	}
}

func TestFleetSimFactsServeTheGivenReport(t *testing.T) {
	report := `{"version":1,"system":"x86_64-linux","hardware":{"cpu":[{"siblings":4}]}}`
	path := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	f := startSim(t, 1, 0, "-facter-report", path)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.dial(t, "m0", identity.MachineDNSName(ns, "m0")).Facts(ctx, &agentv1.FactsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.GetReportJson()) != report {
		t.Fatalf("facts = %s, want the report file's content", resp.GetReportJson())
	}
	if s := f.stats(t); s.Machines[ns+"/m0"].Facts != 1 {
		t.Fatalf("facts calls counted %d, want 1", s.Machines[ns+"/m0"].Facts)
	}
}
