package server

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fakeExecutor stands in for Nix: builds return a made-up store path per source,
// and the profile and current system live in memory.
type fakeExecutor struct {
	mu        sync.Mutex
	gen       int64
	profile   map[int64]string
	current   string
	calls     []string
	buildGate chan struct{} // when set, Build waits for it to close
	building  chan struct{} // closed when the first Build starts, if set
	buildOnce sync.Once
	failBuild bool
	// buildIgnoresCancel makes a gated Build finish only when the gate opens, even
	// after its context ended (a build that ends late).
	buildIgnoresCancel bool
	// units are the activations, by unit name, like systemd's transient units:
	// they outlive the agent that started them.
	units map[string]*fakeUnit
	// detach makes Activate start its unit and never return — the agent died
	// while waiting for it; endUnit ends it. activating receives the unit names.
	detach     bool
	activating chan string
	// currentReads counts CurrentSystem calls: Status makes one, so it shows
	// whether a handler ran.
	currentReads atomic.Int64
}

func newFakeExecutor() *fakeExecutor {
	return &fakeExecutor{profile: map[int64]string{}, units: map[string]*fakeUnit{}}
}

type fakeUnit struct {
	path, action string
	done         chan struct{}
	err          error
}

func (f *fakeExecutor) record(c string) {
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
}

func (f *fakeExecutor) Build(ctx context.Context, t nixos.Target, outLink string, log nixos.LineFunc) (string, error) {
	f.record("build " + t.Attr)
	log(nixos.Stdout, "fake: building "+t.Attr)
	if f.building != nil {
		f.buildOnce.Do(func() { close(f.building) })
	}
	if f.buildGate != nil {
		select {
		case <-f.buildGate:
		case <-ctx.Done():
			if !f.buildIgnoresCancel {
				return "", fmt.Errorf("nix build: %w", ctx.Err())
			}
			<-f.buildGate
		}
	}
	if f.failBuild {
		log(nixos.Stderr, "fake: error: build failed")
		return "", errors.New("nix build: exit status 1")
	}
	data, err := os.ReadFile(filepath.Join(t.FlakeDir, "flake.nix"))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return "/nix/store/" + hex.EncodeToString(sum[:6]) + "-nixos-system-" + t.Attr, nil
}

func (f *fakeExecutor) SetProfile(ctx context.Context, p string, log nixos.LineFunc) error {
	f.record("set-profile " + p)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	f.profile[f.gen] = p
	return nil
}

func (f *fakeExecutor) SwitchGeneration(ctx context.Context, gen int64, log nixos.LineFunc) error {
	f.record(fmt.Sprintf("switch-generation %d", gen))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen = gen
	return nil
}

func (f *fakeExecutor) Activate(ctx context.Context, p, action string, a nixos.Activation, log nixos.LineFunc) error {
	f.record("activate " + action + " " + p)
	u := &fakeUnit{path: p, action: action, done: make(chan struct{})}
	f.mu.Lock()
	f.units[a.Unit] = u
	detach, activating := f.detach, f.activating
	f.mu.Unlock()
	if activating != nil {
		activating <- a.Unit
	}
	if detach {
		<-make(chan struct{}) // the agent is dead; the unit runs on
	}
	f.endUnit(a.Unit, true)
	return u.err
}

// endUnit ends a running activation, which takes effect when it succeeds.
func (f *fakeExecutor) endUnit(unit string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.units[unit]
	if ok && (u.action == "switch" || u.action == "test") {
		f.current = u.path
	}
	if !ok {
		u.err = errors.New("switch-to-configuration exited with status 1")
	}
	close(u.done)
}

func (f *fakeExecutor) setDetach(detach bool) {
	f.mu.Lock()
	f.detach = detach
	f.mu.Unlock()
}

func (f *fakeExecutor) WaitActivation(ctx context.Context, a nixos.Activation, log nixos.LineFunc) error {
	f.record("wait " + a.Unit)
	f.mu.Lock()
	u := f.units[a.Unit]
	f.mu.Unlock()
	if u == nil {
		return fmt.Errorf("activation %s is not running and recorded no exit status", a.Unit)
	}
	select {
	case <-u.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return u.err
}

func (f *fakeExecutor) Generation() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, nil
}

func (f *fakeExecutor) Generations() ([]nixos.Generation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var gens []nixos.Generation
	for n := int64(1); n <= int64(len(f.profile)); n++ {
		if p, ok := f.profile[n]; ok {
			gens = append(gens, nixos.Generation{Number: n, System: p})
		}
	}
	return gens, nil
}

func (f *fakeExecutor) CurrentSystem() (string, error) {
	f.currentReads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current, nil
}

func (f *fakeExecutor) BootedSystem() (string, error) { return "", nil }

func (f *fakeExecutor) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// startBufconn serves s in memory and returns a client.
func startBufconn(t *testing.T, s *Server) agentv1.AgentServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentServiceClient(conn)
}

func newTestServer(t *testing.T, x nixos.Executor, stateDir string) *Server {
	t.Helper()
	// The secrets dir beside the state dir, as /run/nio-secrets beside /var/lib: it
	// survives a restart of the server on the same stateDir.
	s, err := New(Config{Executor: x, StateDir: stateDir, SecretsDir: stateDir + "-secrets", MaxSourceBytes: 1 << 20, FacterPath: "nixos-facter", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// entry is one tar entry for makeArchive.
type entry struct {
	name, body, link string
	typ              byte
}

func makeArchive(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o644, Linkname: e.link, Size: int64(len(e.body))}
		if typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// archiveDir packs a directory tree (files and dirs) the way the operator renders a
// source.
func archiveDir(t testing.TB, dir string) []byte {
	t.Helper()
	var entries []entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			entries = append(entries, entry{name: filepath.ToSlash(rel) + "/", typ: tar.TypeDir})
			return nil
		}
		body, err := os.ReadFile(p)
		entries = append(entries, entry{name: filepath.ToSlash(rel), body: string(body)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return makeArchive(t, entries...)
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func flakeHeader(id string, action agentv1.Action, archive []byte) *agentv1.ApplyHeader {
	return &agentv1.ApplyHeader{
		OperationId:  id,
		Target:       &agentv1.ApplyHeader_Flake{Flake: &agentv1.FlakeTarget{Dir: ".", Attr: "worker"}},
		Action:       action,
		Commit:       "c-" + id,
		SourceDigest: digestOf(archive),
		SourceSize:   int64(len(archive)),
	}
}

func withConfirm(h *agentv1.ApplyHeader, d time.Duration) *agentv1.ApplyHeader {
	h.ConfirmTimeout = durationpb.New(d)
	return h
}

// applyRun is what one Apply stream saw.
type applyRun struct {
	events   []*agentv1.ApplyResponse
	needed   bool
	result   *agentv1.ApplyResult
	streamed error
}

func (r *applyRun) logText() string {
	var b bytes.Buffer
	for _, ev := range r.events {
		if l := ev.GetLog(); l != nil {
			b.WriteString(l.GetText() + "\n")
		}
	}
	return b.String()
}

func (r *applyRun) phases() []agentv1.Phase {
	var ps []agentv1.Phase
	for _, ev := range r.events {
		if p := ev.GetPhase(); p != nil {
			ps = append(ps, p.GetPhase())
		}
	}
	return ps
}

// apply runs one Apply stream to the end, sending archive when asked. When
// onEvent returns false, it stops reading (the stream is cancelled).
func apply(t *testing.T, c agentv1.AgentServiceClient, h *agentv1.ApplyHeader, archive []byte, onEvent func(*agentv1.ApplyResponse) bool) *applyRun {
	t.Helper()
	return applyWithSecrets(t, c, h, nil, archive, onEvent)
}

// applyWithSecrets is apply that sends secrets right after the header, as the
// operator does (the header's manifest is set from them when it has none).
func applyWithSecrets(t *testing.T, c agentv1.AgentServiceClient, h *agentv1.ApplyHeader, secrets []*agentv1.SecretFile, archive []byte, onEvent func(*agentv1.ApplyResponse) bool) *applyRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if secrets != nil && h.Secrets == nil {
		h.Secrets = &agentv1.SecretsManifest{Count: uint32(len(secrets)), Digest: "test-digest-" + h.GetOperationId()}
	}
	if err := st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Header{Header: h}}); err != nil {
		t.Fatal(err)
	}
	for _, f := range secrets {
		// io.EOF: the agent already ended the stream (it refused the header); its
		// status comes from Recv below.
		if err := st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Secret{Secret: f}}); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	run := &applyRun{}
	for {
		ev, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return run
		}
		if err != nil {
			run.streamed = err
			return run
		}
		run.events = append(run.events, ev)
		if ev.GetNeedSource() != nil {
			run.needed = true
			for off := 0; off < len(archive); off += 4096 {
				chunk := archive[off:min(off+4096, len(archive))]
				if err := st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Chunk{Chunk: &agentv1.SourceChunk{Data: chunk}}}); err != nil {
					t.Fatal(err)
				}
			}
			st.CloseSend()
		}
		if r := ev.GetResult(); r != nil {
			run.result = r
		}
		if onEvent != nil && !onEvent(ev) {
			return run
		}
	}
}

func checkSequences(t *testing.T, evs []*agentv1.ApplyResponse, after uint64) {
	t.Helper()
	for i, ev := range evs {
		if want := after + uint64(i) + 1; ev.GetSequence() != want {
			t.Fatalf("event %d has sequence %d, want %d", i, ev.GetSequence(), want)
		}
	}
}
