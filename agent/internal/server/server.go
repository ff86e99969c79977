// Package server implements the AgentService of proto/nio/agent/v1: Apply with its
// operations (idempotent by id, one at a time, magic rollback), Status, Facts,
// Confirm and RenewCertificate. The steps on the host run through a nixos.Executor.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/homystack/nio/agent/internal/archive"
	"github.com/homystack/nio/agent/internal/certs"
	"github.com/homystack/nio/agent/internal/facter"
	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// keptOperations is how many finished operations stay attachable in memory.
const keptOperations = 32

// Config is what a Server needs.
type Config struct {
	// Executor runs the steps on the host.
	Executor nixos.Executor
	// Certs is the serving identity; nil disables RenewCertificate (bufconn tests).
	Certs *certs.Store
	// StateDir holds the source cache (sources/), per-operation work dirs (ops/) and
	// the last operation record.
	StateDir string
	// MaxSourceBytes caps an archive and its unpacked content.
	MaxSourceBytes int64
	// SecretsDir is where secrets are kept (secrets.go), on tmpfs: never in
	// StateDir, which is on disk. Empty: operations with secrets are refused.
	SecretsDir string
	// FacterPath is the nixos-facter binary.
	FacterPath string
	// FacterSystemdRun runs nixos-facter through systemd-run, outside the agent's
	// sandbox (see facter.Config).
	FacterSystemdRun bool
	// HealthSystemdRun runs command health checks through systemd-run, in
	// transient units with the host's view rather than the agent's sandbox
	// (health.SystemdRunner); else they are the agent's children.
	HealthSystemdRun bool
	// Version is reported by Status.
	Version string
	// RefusedHandshakes, when set, gives Status.refused_handshakes: the TLS
	// handshakes refused since the start, by reason (handshake.Recorder.Counts).
	RefusedHandshakes func() map[string]uint64
	Logger            *slog.Logger

	// crashAt, in tests, is called at each step of an operation (the journal's
	// step names, and "profile-set", "activated", "health-checked",
	// "confirm-window"); blocking in it forever stands for the agent being killed
	// there.
	crashAt func(point string)
	// systemctl, in tests, replaces systemctl on PATH for the health checks.
	systemctl string
}

// Server is the AgentService.
type Server struct {
	agentv1.UnimplementedAgentServiceServer

	cfg   Config
	log   *slog.Logger
	cache *archive.Cache

	mu       sync.Mutex
	ops      map[string]*operation
	order    []string // ids in start order, for trimming
	running  *operation
	last     *agentv1.OperationSummary // from disk, until an operation runs
	draining bool
}

// New prepares the state directory, loads the last operation record and recovers
// the operation the journal shows unfinished (recover.go): that operation is
// registered — attachable, Status busy — before New returns, and finishes in the
// background. So New must run before the server serves, as main does.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "ops"), 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	cache, err := archive.NewCache(filepath.Join(cfg.StateDir, "sources"), cfg.MaxSourceBytes)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, cache: cache, ops: map[string]*operation{}}
	if data, err := os.ReadFile(s.recordPath()); err == nil {
		last := &agentv1.OperationSummary{}
		if err := protojson.Unmarshal(data, last); err != nil {
			s.log.Warn("ignoring unreadable last operation record", "path", s.recordPath(), "err", err)
		} else {
			s.last = last
		}
	}
	s.recoverJournal()
	return s, nil
}

// Register adds the service to g.
func (s *Server) Register(g *grpc.Server) { agentv1.RegisterAgentServiceServer(g, s) }

func (s *Server) recordPath() string { return filepath.Join(s.cfg.StateDir, "last-operation.json") }

// Drain refuses new operations from now on and waits until the running one (including
// its confirm window) has finished, or ctx ends. An activation is never abandoned
// half-way by a shutdown.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	op := s.running
	s.mu.Unlock()
	if op == nil {
		return nil
	}
	s.log.Info("waiting for the running operation before shutting down", "operation", op.id)
	select {
	case <-op.doneCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("operation %s still running: %w", op.id, ctx.Err())
	}
}

// Status implements AgentService.
func (s *Server) Status(ctx context.Context, _ *agentv1.StatusRequest) (*agentv1.StatusResponse, error) {
	x := s.cfg.Executor
	current, err := x.CurrentSystem()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "current system: %v", err)
	}
	booted, err := x.BootedSystem()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "booted system: %v", err)
	}
	gen, err := x.Generation()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "generation: %v", err)
	}
	hostname, _ := os.Hostname()
	resp := &agentv1.StatusResponse{
		CurrentSystem: current,
		BootedSystem:  booted,
		Generation:    gen,
		AgentVersion:  s.cfg.Version,
		Hostname:      hostname,
		NeedsReboot:   nixos.NeedsReboot(current, booted, s.profileSystem()),
		Features:      []string{featureHealthChecks, featureActivateGeneration},
	}
	s.mu.Lock()
	resp.LastOperation, resp.Busy = s.lastLocked()
	s.mu.Unlock()
	if s.cfg.Certs != nil {
		resp.CertificateNotAfter = timestamppb.New(s.cfg.Certs.NotAfter())
	}
	if s.cfg.RefusedHandshakes != nil {
		resp.RefusedHandshakes = s.cfg.RefusedHandshakes()
	}
	return resp, nil
}

// profileSystem is what the next boot runs, when the executor can tell (the real
// one can; stand-ins need not).
func (s *Server) profileSystem() string {
	p, ok := s.cfg.Executor.(interface{ ProfileSystem() (string, error) })
	if !ok {
		return ""
	}
	next, err := p.ProfileSystem()
	if err != nil {
		s.log.Warn("read the system profile", "err", err)
	}
	return next
}

func (s *Server) lastLocked() (*agentv1.OperationSummary, bool) {
	if s.running != nil {
		return s.running.snapshot(), !s.running.done()
	}
	if n := len(s.order); n > 0 {
		return s.ops[s.order[n-1]].snapshot(), false
	}
	return s.last, false
}

// Facts implements AgentService.
func (s *Server) Facts(ctx context.Context, _ *agentv1.FactsRequest) (*agentv1.FactsResponse, error) {
	report, err := facter.Run(ctx, facter.Config{Path: s.cfg.FacterPath, SystemdRun: s.cfg.FacterSystemdRun})
	if err != nil {
		s.log.Warn("facts failed", "err", err)
		return nil, status.Errorf(codes.Internal, "facts: %v", err)
	}
	return &agentv1.FactsResponse{ReportJson: report}, nil
}

// Confirm implements AgentService: it keeps the system of an operation awaiting
// confirmation, and reports the outcome of one that no longer is.
func (s *Server) Confirm(ctx context.Context, req *agentv1.ConfirmRequest) (*agentv1.ConfirmResponse, error) {
	s.mu.Lock()
	op := s.ops[req.GetOperationId()]
	s.mu.Unlock()
	if op == nil {
		return nil, status.Errorf(codes.NotFound, "no operation %q", req.GetOperationId())
	}
	if !op.confirm() && !op.done() {
		return nil, status.Errorf(codes.FailedPrecondition, "operation %q is not awaiting confirmation yet", op.id)
	}
	s.log.Info("confirm", "operation", op.id)
	select {
	case <-op.doneCh:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &agentv1.ConfirmResponse{Outcome: op.outcome()}, nil
}

// RenewCertificate implements AgentService: Begin → CSR → signed certificate →
// installed. The new key never leaves the host.
func (s *Server) RenewCertificate(stream agentv1.AgentService_RenewCertificateServer) error {
	if s.cfg.Certs == nil {
		return status.Error(codes.Unavailable, "this agent has no certificate store")
	}
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	begin := req.GetBegin()
	if begin == nil {
		return status.Error(codes.InvalidArgument, "first message must be RenewBegin")
	}
	renewal, err := s.cfg.Certs.BeginRenewal(begin.GetDnsName())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := stream.Send(&agentv1.RenewCertificateResponse{Msg: &agentv1.RenewCertificateResponse_CsrPem{CsrPem: renewal.CSRPEM}}); err != nil {
		return err
	}
	req, err = stream.Recv()
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "stream ended before the signed certificate")
	}
	if err != nil {
		return err
	}
	signed := req.GetSigned()
	if signed == nil {
		return status.Error(codes.InvalidArgument, "second message must be SignedCertificate")
	}
	notAfter, err := renewal.Install(signed.GetCertificatePem())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	s.log.Info("serving renewed certificate", "dns_name", begin.GetDnsName(), "not_after", notAfter)
	return stream.Send(&agentv1.RenewCertificateResponse{Msg: &agentv1.RenewCertificateResponse_Installed{
		Installed: &agentv1.CertificateInstalled{NotAfter: timestamppb.New(notAfter)},
	}})
}

// writeRecord persists an operation summary so Status reports it after a restart.
func (s *Server) writeRecord(sum *agentv1.OperationSummary) {
	data, err := protojson.Marshal(sum)
	if err == nil {
		err = writeFileSync(s.recordPath(), data)
	}
	if err != nil {
		s.log.Warn("cannot write last operation record", "err", err)
	}
}

var errDraining = status.Error(codes.Unavailable, "the agent is shutting down; retry against the restarted agent")
