// Package hosttest is the recording stand-in for hosts: what a NixOS kernel, a disk
// and the network would do is behind the host.Host seam, and a Fleet of stand-ins
// records what the controllers asked of each. Controller tests drive it; so can any
// other controller's.
package hosttest

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
	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/install"
	"github.com/homystack/nio/operator/internal/transport"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Fleet opens the stand-ins: each Machine name has one Host.
type Fleet struct {
	// Client reads the Machines' SSH key Secrets (as the real Hosts do).
	Client    client.Client
	mu        sync.Mutex
	hosts     map[string]*Host
	opens     map[string]int // Open calls per Machine name, failed ones included
	forgotten map[string]int // Forget calls per Machine name
}

// NewFleet returns a Fleet; set Client before the first Open of a Machine with an
// SSH key.
func NewFleet() *Fleet {
	return &Fleet{hosts: map[string]*Host{}, opens: map[string]int{}, forgotten: map[string]int{}}
}

// Forget records that the controllers let go of Machine m.
func (f *Fleet) Forget(m types.NamespacedName) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgotten[m.Name]++
}

// ForgetCount is how many times Forget was called for Machine name.
func (f *Fleet) ForgetCount(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forgotten[name]
}

// OpenCount is how many times Open was called for Machine name.
func (f *Fleet) OpenCount(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opens[name]
}

// Host is the stand-in of Machine name. Tests run one namespace each, one operator
// each (its cache limited to that namespace), so names are unique within a fleet.
func (f *Fleet) Host(name string) *Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hosts[name]
	if !ok {
		h = &Host{name: name, AgentUp: true, SSHUp: true, FailCommits: map[string][]string{},
			FailHealth: map[string]HealthFailure{}, Fingerprint: "SHA256:fake-" + name, AgentVersion: "test"}
		f.hosts[name] = h
	}
	return h
}

// Open mimics the real factory: the SSH key Secret is read when SSH is used, and
// must exist when referenced; a Machine with spec.agent.disabled has no agent way
// (whatever AgentUp says).
func (f *Fleet) Open(_ context.Context, m *nio.Machine) (host.Host, error) {
	f.mu.Lock()
	f.opens[m.Name]++
	f.mu.Unlock()
	var sshKey func(context.Context) error
	if m.Spec.SSHKeySecretRef != nil {
		m := m.DeepCopy()
		sshKey = func(ctx context.Context) error {
			_, err := host.SSHKey(ctx, f.Client, m)
			return err
		}
	}
	h := f.Host(m.Name)
	h.Set(func(h *Host) {
		h.agentDisabled = m.Spec.Agent.Disabled
		h.hostKeyRecorded = m.Spec.SSHHostKey != "" || m.Status.SSHHostKeyFingerprint != ""
		h.sshKey = sshKey
	})
	return h, nil
}

// AppliedOp is one Apply a Host received.
type AppliedOp struct {
	ID        string
	Commit    string
	Action    string
	Target    transport.Target
	Transport nio.Transport
	Files     map[string]string
	Modes     map[string]int64
	// Secrets is what the host's secrets directory was to hold (never in Files).
	Secrets *transport.Secrets
	// HealthChecks are the checks the request carried to the agent.
	HealthChecks *transport.HealthChecks
	Outcome      transport.Outcome
	// Health is the report the host returned (nil: no checks ran).
	Health *transport.HealthReport
	// Start is when Apply was called, End when it returned its outcome.
	Start, End time.Time
}

// HealthFailure makes a commit's health checks fail on a host: Check is the check
// that does not pass (named in the report even when the request lacks it), Message
// what its last attempt saw.
type HealthFailure struct {
	Check, Message string
}

// Host is one Machine's stand-in. Tests change its fields through Set.
type Host struct {
	name string
	mu   sync.Mutex

	// AgentUp and SSHUp say which ways answer (Apply goes over the agent when up).
	AgentUp, SSHUp bool
	// ConfirmFails makes Confirm fail: a switch rolls back.
	ConfirmFails bool
	// SSHMismatch makes the probe see another host key.
	SSHMismatch bool
	// FailCommits are the commits whose build fails, with their error lines.
	FailCommits map[string][]string
	// FailHealth are the commits whose health checks fail after activation: the
	// agent rolls back (RolledBack, with the report). Without checks in the request
	// nothing is checked.
	FailHealth map[string]HealthFailure
	// NoHealthFeature is an agent too old to run health checks: its Status lists no
	// features, and an Apply with checks is refused before anything starts.
	NoHealthFeature bool
	// NoRollbackFeature is an agent too old to activate an earlier generation: its
	// Status does not list it, and ActivateGeneration is refused.
	NoRollbackFeature bool
	// InvalidHealth, when set, is why the agent refuses every request's health
	// checks before building (ErrInvalidHealthChecks), e.g. a URL off the host.
	InvalidHealth string
	// Marker is the install marker (/var/lib/nio/installed).
	Marker bool
	// FactsReport is what nixos-facter prints (nil: not installed).
	FactsReport []byte
	// FactsFails is how many of the next Facts calls fail (nixos-facter crashed).
	FactsFails int
	// Fingerprint is the SSH host key's; AgentVersion the agent's.
	Fingerprint, AgentVersion string
	// Generation and Current are the system profile's generation and running system.
	Generation int64
	Current    string
	// Identities counts the agent TLS identities delivered.
	Identities int
	// IdentityErr makes AgentIdentityPresent fail (e.g. sudo refused).
	IdentityErr error
	// Block, when set, holds Apply until closed (a long build).
	Block chan struct{}
	// Timeouts are the ApplyRequest.Timeout of every Apply, in order.
	Timeouts []time.Duration

	// Probes counts every probe; SSHProbes those that logged in over SSH.
	Probes    int
	SSHProbes int

	// agentDisabled is the Machine's spec.agent.disabled at the last Open.
	agentDisabled bool
	// hostKeyRecorded: the Machine pinned or recorded its host key at the last Open.
	hostKeyRecorded bool
	// sshKey reads the SSH key Secret of the Machine at the last Open (nil: none).
	sshKey  func(context.Context) error
	applies []AppliedOp
	calls   int
	// systems are the profile's generations (see generation.go).
	systems     map[int64]string
	activations []GenerationActivation
}

// Set changes the stand-in under its lock.
func (h *Host) Set(f func(h *Host)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

// Calls is how many times Apply was called, refused ones included.
func (h *Host) Calls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// agentOn says whether the agent answers (under the lock).
func (h *Host) agentOn() bool { return h.AgentUp && !h.agentDisabled }

// readSSHKey reads the Machine's SSH key Secret, as the real Host does the first
// time it needs SSH: a missing Secret or key is that call's error.
func (h *Host) readSSHKey(ctx context.Context) error {
	h.mu.Lock()
	key := h.sshKey
	h.mu.Unlock()
	if key == nil {
		return nil
	}
	return key(ctx)
}

// viaSSH reads the SSH key when the agent does not answer, as the fallback then
// turns to SSH.
func (h *Host) viaSSH(ctx context.Context) error {
	h.mu.Lock()
	agent := h.agentOn()
	h.mu.Unlock()
	if agent {
		return nil
	}
	return h.readSSHKey(ctx)
}

// Ops are the Applies the stand-in received, in order.
func (h *Host) Ops() []AppliedOp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]AppliedOp(nil), h.applies...)
}

func (h *Host) Apply(ctx context.Context, req transport.ApplyRequest) (transport.ApplyResult, error) {
	start := time.Now()
	h.mu.Lock()
	up, agent, block := h.agentOn() || h.SSHUp, h.agentOn(), h.Block
	disabled, noHealth, invalid, version := h.agentDisabled, h.NoHealthFeature, h.InvalidHealth, h.AgentVersion
	h.Timeouts = append(h.Timeouts, req.Timeout)
	h.calls++
	h.mu.Unlock()
	if req.HealthChecks != nil {
		// As the real transports do, before anything is sent: only an agent that
		// runs checks gets a request with checks.
		switch {
		case !agent:
			var agentErr error
			if !disabled {
				agentErr = fmt.Errorf("dial %s: %w", h.name, transport.ErrUnreachable)
			}
			return transport.ApplyResult{Transport: nio.TransportSSH}, transport.RefuseHealthChecksOverSSH(agentErr)
		case noHealth:
			return transport.ApplyResult{Transport: nio.TransportAgent}, transport.RefuseHealthChecksOnOldAgent(h.name, version)
		case invalid != "":
			return transport.ApplyResult{Transport: nio.TransportAgent}, fmt.Errorf("agent %s apply %s: %w: %s", h.name, req.OperationID, transport.ErrInvalidHealthChecks, invalid)
		}
	}
	if !agent {
		if err := h.readSSHKey(ctx); err != nil {
			return transport.ApplyResult{Transport: nio.TransportSSH}, err
		}
	}
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
	op := AppliedOp{ID: req.OperationID, Commit: req.Commit, Action: string(req.Action), Target: req.Target, Transport: via,
		Files: files, Modes: modes, Secrets: req.Secrets, HealthChecks: req.HealthChecks, Start: start}
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
	errLines, fails := h.FailCommits[req.Commit]
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
	if req.HealthChecks != nil {
		h.mu.Lock()
		failure, unhealthy := h.FailHealth[req.Commit]
		h.mu.Unlock()
		res.Health = healthReport(req.HealthChecks, failure, unhealthy)
		op.Health = res.Health
		if unhealthy {
			emit("health check " + failure.Check + " failed: " + failure.Message)
			res.Outcome, res.Generation = transport.OutcomeRolledBack, h.gen()
			res.Message = "health check " + failure.Check + " failed: " + failure.Message + "; rolled back to the previous generation"
			op.Outcome = res.Outcome
			h.record(op)
			return res, nil
		}
	}
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
	h.Generation = h.newestGeneration() + 1 // as nix-env --set numbers them
	h.Current = storePath
	h.profile()[h.Generation] = storePath
	res.Generation = h.Generation
	h.mu.Unlock()
	res.Outcome, res.StorePath = transport.OutcomeSucceeded, storePath
	op.Outcome = res.Outcome
	h.record(op)
	return res, nil
}

// healthReport is what the agent reports for checks, failing failure.Check when
// unhealthy.
func healthReport(checks *transport.HealthChecks, failure HealthFailure, unhealthy bool) *transport.HealthReport {
	r := &transport.HealthReport{Passed: !unhealthy}
	named := false
	for _, c := range checks.Checks {
		res := transport.HealthCheckResult{Name: c.Name, Passed: true, Attempts: 1, Message: "passed"}
		if unhealthy && c.Name == failure.Check {
			res = transport.HealthCheckResult{Name: c.Name, Attempts: 3, Message: failure.Message}
			named = true
		}
		r.Results = append(r.Results, res)
	}
	if unhealthy {
		if !named {
			r.Results = append(r.Results, transport.HealthCheckResult{Name: failure.Check, Attempts: 3, Message: failure.Message})
		}
		r.FirstFailure = failure.Check
	}
	return r
}

func (h *Host) gen() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.Generation
}

func (h *Host) record(op AppliedOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	op.End = time.Now()
	h.applies = append(h.applies, op)
}

func (h *Host) Status(ctx context.Context) (transport.SystemStatus, error) {
	if err := h.viaSSH(ctx); err != nil {
		return transport.SystemStatus{}, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.agentOn() && !h.SSHUp {
		return transport.SystemStatus{}, transport.ErrUnreachable
	}
	st := transport.SystemStatus{Transport: nio.TransportSSH, CurrentSystem: h.Current, BootedSystem: h.Current, Generation: h.Generation}
	if h.agentOn() {
		st.Transport, st.AgentVersion = nio.TransportAgent, h.AgentVersion
		if !h.NoHealthFeature {
			st.Features = []string{transport.FeatureHealthChecks}
		}
		if !h.NoRollbackFeature {
			st.Features = append(st.Features, transport.FeatureActivateGeneration)
		}
	}
	return st, nil
}

func (h *Host) Facts(ctx context.Context) ([]byte, error) {
	if err := h.viaSSH(ctx); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.FactsReport == nil {
		return nil, errors.New("nixos-facter: not found")
	}
	if h.FactsFails > 0 {
		h.FactsFails--
		return nil, errors.New("nixos-facter: killed by signal")
	}
	return h.FactsReport, nil
}

func (h *Host) Confirm(context.Context, string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ConfirmFails || !h.agentOn() {
		return fmt.Errorf("confirm: %w", transport.ErrUnreachable)
	}
	return nil
}

func (h *Host) Probe(ctx context.Context) transport.ProbeResult {
	h.mu.Lock()
	skip := h.agentOn() && h.hostKeyRecorded
	h.mu.Unlock()
	var keyErr error
	if !skip {
		keyErr = h.readSSHKey(ctx)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Probes++
	p := transport.ProbeResult{AgentReachable: h.agentOn(), SSHReachable: h.SSHUp}
	switch {
	case h.agentOn():
		p.AgentVersion = h.AgentVersion
	case h.agentDisabled:
		p.AgentError = errors.New("the agent is disabled")
	default:
		p.AgentError = fmt.Errorf("dial: %w", transport.ErrUnreachable)
	}
	// As transport.Fallback: no SSH login while the agent answers and the host key
	// is recorded.
	if h.agentOn() && h.hostKeyRecorded {
		p.SSHReachable, p.SSHSkipped = false, true
		return p
	}
	if keyErr != nil {
		p.SSHReachable, p.SSHError = false, keyErr
		return p
	}
	h.SSHProbes++
	switch {
	case h.SSHMismatch:
		p.SSHError = fmt.Errorf("host key SHA256:other: %w", transport.ErrHostKeyMismatch)
	case h.SSHUp:
		p.SSHHostKeyFingerprint = h.Fingerprint
	default:
		p.SSHError = fmt.Errorf("dial: %w", transport.ErrUnreachable)
	}
	return p
}

func (h *Host) AgentIdentityPresent(ctx context.Context) (bool, error) {
	if err := h.readSSHKey(ctx); err != nil {
		return false, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.IdentityErr != nil {
		return false, h.IdentityErr
	}
	return h.Identities > 0, nil
}

func (h *Host) InstallAgentIdentity(ctx context.Context, ca, cert, key []byte) error {
	if err := h.readSSHKey(ctx); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(ca) == 0 || len(cert) == 0 || len(key) == 0 {
		return errors.New("empty identity")
	}
	h.Identities++
	return nil
}

func (h *Host) RenewAgentCertificate(context.Context, func([]byte) ([]byte, error)) (time.Time, error) {
	return time.Time{}, errors.New("not supported by the fake")
}

func (h *Host) InstallMarkerPresent(ctx context.Context) (bool, error) {
	if err := h.readSSHKey(ctx); err != nil {
		return false, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.SSHUp {
		return false, transport.ErrUnreachable
	}
	return h.Marker, nil
}

func (h *Host) Close() error { return nil }

// Installer records nixos-anywhere runs; a run leaves the marker on the Fleet's host.
type Installer struct {
	Fleet *Fleet
	mu    sync.Mutex
	runs  []install.Request
	at    []time.Time // when each run started
	// Fail, when set, makes every run fail (kexec refused, disk busy, ...).
	Fail error
}

func (f *Installer) Run(_ context.Context, req install.Request) (install.Result, error) {
	f.mu.Lock()
	f.runs = append(f.runs, req)
	f.at = append(f.at, time.Now())
	fail := f.Fail
	f.mu.Unlock()
	if fail != nil {
		return install.Result{LogTail: []string{"kexec: " + fail.Error()}}, fail
	}
	f.Fleet.Host(req.Machine).Set(func(h *Host) { h.Marker = true; h.Generation = 1 })
	return install.Result{HostPublicKey: InstalledHostKey}, nil
}

// InstalledHostKey is the host key every successful install reports it generated.
const InstalledHostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

// Times are when each run started.
func (f *Installer) Times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.at...)
}

// Count is how many runs there were.
func (f *Installer) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.runs)
}

// Runs are the install requests, in order.
func (f *Installer) Runs() []install.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]install.Request(nil), f.runs...)
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
