package controller

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
	"sync"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/install"
	"github.com/homystack/nio/operator/internal/transport"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// fakeFleet is the recording stand-in for hosts: what a NixOS kernel, a disk and
// the network would do is behind the Host seam. Each Machine name has one fakeHost.
type fakeFleet struct {
	c     client.Client
	mu    sync.Mutex
	hosts map[string]*fakeHost
	opens map[string]int // Open calls per Machine name, failed ones included
}

func newFakeFleet() *fakeFleet {
	return &fakeFleet{hosts: map[string]*fakeHost{}, opens: map[string]int{}}
}

// openCount is how many times Open was called for Machine name.
func (f *fakeFleet) openCount(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opens[name]
}

// host is the stand-in of Machine name. Tests run one namespace each, one operator
// each (its cache limited to that namespace), so names are unique within a fleet.
func (f *fakeFleet) host(name string) *fakeHost {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hosts[name]
	if !ok {
		h = &fakeHost{name: name, agentUp: true, sshUp: true, failCommits: map[string][]string{},
			fingerprint: "SHA256:fake-" + name, agentVersion: "test"}
		f.hosts[name] = h
	}
	return h
}

// Open mimics the real factory: the SSH key Secret must exist when referenced.
func (f *fakeFleet) Open(ctx context.Context, m *nio.Machine) (Host, error) {
	f.mu.Lock()
	f.opens[m.Name]++
	f.mu.Unlock()
	if m.Spec.SSHKeySecretRef != nil {
		if _, err := MachineSSHKey(ctx, f.c, m); err != nil {
			return nil, err
		}
	}
	return f.host(m.Name), nil
}

// appliedOp is one Apply a fakeHost received.
type appliedOp struct {
	ID        string
	Commit    string
	Action    string
	Target    transport.Target
	Transport nio.Transport
	Files     map[string]string
	Modes     map[string]int64
	// Secrets is what the host's secrets directory was to hold (never in Files).
	Secrets *transport.Secrets
	Outcome transport.Outcome
}

type fakeHost struct {
	name string

	mu           sync.Mutex
	agentUp      bool
	sshUp        bool
	confirmFails bool
	sshMismatch  bool
	failCommits  map[string][]string // commit → build error lines
	marker       bool
	facts        []byte
	factsFails   int // the next factsFails Facts calls fail (nixos-facter crashed)
	fingerprint  string
	agentVersion string
	generation   int64
	current      string
	applies      []appliedOp
	identities   int
	identityErr  error // AgentIdentityPresent fails with it (e.g. sudo refused)
	// block, when set, holds Apply until closed (a long build).
	block chan struct{}
	// timeouts are the ApplyRequest.Timeout of every Apply, in order.
	timeouts []time.Duration
}

func (h *fakeHost) set(f func(h *fakeHost)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

func (h *fakeHost) ops() []appliedOp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]appliedOp(nil), h.applies...)
}

func (h *fakeHost) Apply(ctx context.Context, req transport.ApplyRequest) (transport.ApplyResult, error) {
	h.mu.Lock()
	up, agent, block := h.agentUp || h.sshUp, h.agentUp, h.block
	h.timeouts = append(h.timeouts, req.Timeout)
	h.mu.Unlock()
	if !up {
		return transport.ApplyResult{}, fmt.Errorf("dial %s: %w", h.name, transport.ErrUnreachable)
	}
	via := nio.TransportSSH
	if agent {
		via = nio.TransportAgent
	}
	files, modes, err := readSource(req.Source)
	if err != nil {
		return transport.ApplyResult{}, err
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return transport.ApplyResult{}, ctx.Err()
		}
	}
	op := appliedOp{ID: req.OperationID, Commit: req.Commit, Action: string(req.Action), Target: req.Target, Transport: via, Files: files, Modes: modes, Secrets: req.Secrets}
	emit := func(line string) {
		if req.OnEvent != nil {
			req.OnEvent(transport.Event{Kind: transport.EventLog, Line: line, Time: time.Now()})
		}
	}
	emit("building the system configuration...")
	for _, content := range files {
		emit("read " + fmt.Sprint(len(content)) + " bytes") // never the content itself
	}
	h.mu.Lock()
	errLines, fails := h.failCommits[req.Commit]
	h.mu.Unlock()
	res := transport.ApplyResult{Transport: via}
	if fails {
		for _, l := range errLines {
			emit(l)
		}
		res.Outcome, res.Message = transport.OutcomeFailed, "nix build failed"
		op.Outcome = res.Outcome
		h.record(op)
		return res, nil
	}
	storePath := "/nix/store/" + hashOf(req.Commit + req.Source.Digest)[:32] + "-nixos-system-" + h.name
	if req.ConfirmTimeout > 0 && via == nio.TransportAgent {
		confirmErr := errors.New("no confirmation")
		if req.OnAwaitingConfirm != nil {
			confirmErr = req.OnAwaitingConfirm(ctx, req.OperationID)
		}
		if confirmErr != nil {
			res.Outcome, res.Message, res.Generation = transport.OutcomeRolledBack, "not confirmed: rolled back", h.gen()
			op.Outcome = res.Outcome
			h.record(op)
			return res, nil
		}
	}
	h.mu.Lock()
	h.generation++
	h.current = storePath
	res.Generation = h.generation
	h.mu.Unlock()
	res.Outcome, res.StorePath = transport.OutcomeSucceeded, storePath
	op.Outcome = res.Outcome
	h.record(op)
	return res, nil
}

func (h *fakeHost) gen() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.generation
}

func (h *fakeHost) record(op appliedOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.applies = append(h.applies, op)
}

func (h *fakeHost) Status(context.Context) (transport.SystemStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.agentUp && !h.sshUp {
		return transport.SystemStatus{}, transport.ErrUnreachable
	}
	return transport.SystemStatus{CurrentSystem: h.current, BootedSystem: h.current, Generation: h.generation,
		AgentVersion: h.agentVersion}, nil
}

func (h *fakeHost) Facts(context.Context) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.facts == nil {
		return nil, errors.New("nixos-facter: not found")
	}
	if h.factsFails > 0 {
		h.factsFails--
		return nil, errors.New("nixos-facter: killed by signal")
	}
	return h.facts, nil
}

func (h *fakeHost) Confirm(context.Context, string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.confirmFails || !h.agentUp {
		return fmt.Errorf("confirm: %w", transport.ErrUnreachable)
	}
	return nil
}

func (h *fakeHost) Probe(context.Context) transport.ProbeResult {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := transport.ProbeResult{AgentReachable: h.agentUp, SSHReachable: h.sshUp}
	if h.agentUp {
		p.AgentVersion = h.agentVersion
	} else {
		p.AgentError = fmt.Errorf("dial: %w", transport.ErrUnreachable)
	}
	switch {
	case h.sshMismatch:
		p.SSHError = fmt.Errorf("host key SHA256:other: %w", transport.ErrHostKeyMismatch)
	case h.sshUp:
		p.SSHHostKeyFingerprint = h.fingerprint
	default:
		p.SSHError = fmt.Errorf("dial: %w", transport.ErrUnreachable)
	}
	return p
}

func (h *fakeHost) AgentIdentityPresent(context.Context) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.identityErr != nil {
		return false, h.identityErr
	}
	return h.identities > 0, nil
}

func (h *fakeHost) InstallAgentIdentity(_ context.Context, ca, cert, key []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(ca) == 0 || len(cert) == 0 || len(key) == 0 {
		return errors.New("empty identity")
	}
	h.identities++
	return nil
}

func (h *fakeHost) RenewAgentCertificate(context.Context, func([]byte) ([]byte, error)) (time.Time, error) {
	return time.Time{}, errors.New("not supported by the fake")
}

func (h *fakeHost) InstallMarkerPresent(context.Context) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.sshUp {
		return false, transport.ErrUnreachable
	}
	return h.marker, nil
}

func (h *fakeHost) Close() error { return nil }

// fakeInstaller records nixos-anywhere runs; a run leaves the marker on the host.
type fakeInstaller struct {
	fleet *fakeFleet
	mu    sync.Mutex
	runs  []install.Request
	at    []time.Time // when each run started
	// fail, when set, makes every run fail (kexec refused, disk busy, ...).
	fail error
}

func (f *fakeInstaller) Run(_ context.Context, req install.Request) (install.Result, error) {
	f.mu.Lock()
	f.runs = append(f.runs, req)
	f.at = append(f.at, time.Now())
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		return install.Result{LogTail: []string{"kexec: " + fail.Error()}}, fail
	}
	f.fleet.host(req.Machine).set(func(h *fakeHost) { h.marker = true; h.generation = 1 })
	return install.Result{HostPublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}, nil
}

func (f *fakeInstaller) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.at...)
}

func (f *fakeInstaller) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.runs)
}

func hashOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// readSource checks the archive's digest and returns its files.
func readSource(src transport.Source) (map[string]string, map[string]int64, error) {
	rc, err := src.Open()
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, nil, err
	}
	if got := "sha256:" + hashOf(string(data)); got != src.Digest {
		return nil, nil, fmt.Errorf("digest mismatch: %s != %s", got, src.Digest)
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, nil, err
	}
	files, modes := map[string]string{}, map[string]int64{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, modes, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[h.Name], modes[h.Name] = string(b), h.Mode
		}
	}
}
