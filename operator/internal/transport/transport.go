// Package transport is the seam between the controllers and a host. The controllers
// call one Transport and never know whether nio-agent (mTLS gRPC) or SSH ran the
// operation; the result says which did.
package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Action is what is done with a built system.
type Action string

// The actions nixos-rebuild knows.
const (
	ActionSwitch      Action = "switch"
	ActionBoot        Action = "boot"
	ActionTest        Action = "test"
	ActionDryActivate Action = "dry-activate"
	ActionBuild       Action = "build"
)

// Target is what the system to build is: a flake output, or a NixOS module file.
// Exactly one of FlakeAttr and ModuleFile is set.
type Target struct {
	// FlakeDir is the flake's directory inside the source, relative ("." for the root).
	FlakeDir string
	// FlakeAttr is the name under nixosConfigurations.
	FlakeAttr string
	// ModuleFile is a NixOS module file inside the source, built with
	// `-I nixos-config=<file>`.
	ModuleFile string
}

// Source is a rendered source archive (deterministic tar.gz).
type Source struct {
	// Digest is "sha256:<hex>" of the archive bytes.
	Digest string
	// Size is the archive's length in bytes.
	Size int64
	// Open returns the archive's bytes from the start. It may be called more than
	// once (a reconnect may need to resend), or not at all (the host holds the digest).
	Open func() (io.ReadCloser, error)
}

// Secrets is the set of files the host's secrets directory must hold after an
// operation: /run/nio-secrets/current/<path>, on tmpfs, never in the source or the
// Nix store. The host installs a complete set or none (a new directory, then one
// atomic swap of the `current` link), and returns to the previous set when the
// operation fails or rolls back.
type Secrets struct {
	// Digest identifies the set (the controller's keyed digest; "" for none).
	Digest string
	Files  []SecretFile
}

// SecretFile is one secret.
type SecretFile struct {
	// Path is relative to the secrets directory, clean, slash-separated.
	Path string
	Data []byte
	// Mode is the permission bits (0: 0400).
	Mode uint32
	// Owner and Group are names or numeric ids on the host ("": root).
	Owner, Group string
}

// SecretsDir is the host's secrets directory (the agent's --secrets-dir default;
// render.SecretsDir names the same place in the generated nio-secrets.nix).
const SecretsDir = "/run/nio-secrets"

// Phase names a step of an operation, as the agent reports it.
type Phase string

// Phases, in the order they happen (proto nio.agent.v1.Phase). SSH reports
// ReceivingSource, Building (nixos-rebuild does build and activation) and Done.
const (
	PhaseReceivingSource Phase = "ReceivingSource"
	PhaseUnpacking       Phase = "Unpacking"
	PhaseBuilding        Phase = "Building"
	PhaseSettingProfile  Phase = "SettingProfile"
	PhaseActivating      Phase = "Activating"
	PhaseHealthChecking  Phase = "HealthChecking"
	PhaseAwaitingConfirm Phase = "AwaitingConfirm"
	PhaseRollingBack     Phase = "RollingBack"
	PhaseDone            Phase = "Done"
)

// EventKind tells which field of an Event is set.
type EventKind int

// Event kinds.
const (
	EventPhase EventKind = iota + 1
	EventLog
)

// Event is one progress report of an operation.
type Event struct {
	Kind EventKind
	// Sequence is the agent's event sequence number (0 over SSH).
	Sequence uint64
	Time     time.Time
	// Phase is set for EventPhase.
	Phase Phase
	// Detail says more about a phase, e.g. the command it runs (EventPhase).
	Detail string
	// Line is one line of output for EventLog.
	Line string
	// Stderr marks a log line that came from stderr.
	Stderr bool
}

// ApplyRequest is one operation on a host.
type ApplyRequest struct {
	// OperationID identifies the operation; re-sending the same id after a broken
	// connection attaches to the same operation instead of starting a second one.
	OperationID string
	// Commit the source was rendered from (recorded on the host).
	Commit string
	Action Action
	Target Target
	Source Source
	// Secrets, when not nil, replace the host's secrets set (an empty one removes
	// it); nil leaves it alone. They never travel inside Source.
	Secrets *Secrets
	// ConfirmTimeout > 0 asks for magic rollback: after activation the host waits
	// this long for Confirm and rolls back without it.
	ConfirmTimeout time.Duration
	// HealthChecks, when set, run on the host after activation and before the
	// confirm window; one that does not pass rolls back (ApplyResult.Health says
	// which). Only an agent listing FeatureHealthChecks takes them: any other way to
	// the host refuses the request with ErrHealthChecksNeedAgent before it starts.
	HealthChecks *HealthChecks
	// Timeout > 0 bounds the operation on the host: the agent stops the build when it
	// runs out and starts no activation after it (ApplyHeader.operation_timeout). The
	// transport itself waits at most Timeout + the health checks' timeout +
	// ConfirmTimeout + WaitMargin and then returns an error wrapping ErrTimeout, so a
	// hung or silent host cannot hold the caller; over SSH that wait is the only
	// bound (see SSH.Apply).
	Timeout time.Duration
	// WaitMargin is the transport's allowance beyond Timeout, the health checks and
	// ConfirmTimeout for the transfer and reconnects (default DefaultWaitMargin).
	WaitMargin time.Duration
	// OnAwaitingConfirm is called when the host has activated the system and waits
	// for Confirm. The caller confirms with Transport.Confirm, which opens a new
	// connection. When nil, the operation is not confirmed and rolls back.
	OnAwaitingConfirm func(ctx context.Context, operationID string) error
	// OnEvent receives progress events in order. Optional.
	OnEvent func(Event)
}

// Outcome is how an operation ended.
type Outcome string

// Outcomes.
const (
	OutcomeSucceeded  Outcome = "Succeeded"
	OutcomeFailed     Outcome = "Failed"
	OutcomeRolledBack Outcome = "RolledBack"
)

// ApplyResult is the end of an operation that reached the host. Errors reaching the
// host are returned as errors instead.
type ApplyResult struct {
	// Transport that ran the operation.
	Transport nio.Transport
	Outcome   Outcome
	// Message says why it failed or rolled back.
	Message string
	// Generation is the system profile generation active afterwards.
	Generation int64
	// StorePath of the system the operation built.
	StorePath string
	// LogTail is the last lines of output, for events on failure.
	LogTail []string
	// SourceBytesSent counts archive bytes sent (0 when the host held the digest).
	SourceBytesSent int64
	// TimedOut: the host ended the operation Failed because its Timeout ran out.
	TimedOut bool
	// Health is the outcome of the request's HealthChecks when they ran (the
	// activation succeeded); nil otherwise. Not passed: the outcome is RolledBack
	// (or Failed when the rollback failed too).
	Health *HealthReport
}

// SystemStatus is what a host runs.
type SystemStatus struct {
	Transport     nio.Transport
	CurrentSystem string
	BootedSystem  string
	Generation    int64
	// NeedsReboot: the running system's kernel, initrd or modules differ from the
	// booted system's, or the profile holds a system neither running nor booted
	// (set with action boot).
	NeedsReboot  bool
	AgentVersion string
	// CertificateNotAfter is the agent's serving certificate expiry (agent only).
	CertificateNotAfter time.Time
	// Busy is true while an operation runs on the host.
	Busy bool
	// LastOperationID is the id of the running or last operation.
	LastOperationID string
	// Features are what the agent can do beyond the first protocol (e.g.
	// FeatureHealthChecks); none over SSH.
	Features []string
}

// ProbeResult says how a host can be reached.
type ProbeResult struct {
	// AgentReachable is true when the agent answered over mTLS.
	AgentReachable bool
	// AgentError says why the agent could not be reached.
	AgentError error
	// SSHReachable is true when an SSH session was established.
	SSHReachable bool
	// SSHError says why SSH could not be reached.
	SSHError error
	// SSHHostKeyFingerprint is the SHA256 fingerprint of the host key SSH saw.
	SSHHostKeyFingerprint string
	// SSHSkipped is true when SSH was not probed: the agent answered and the host
	// key is already pinned or recorded (SSHReachable says nothing then).
	SSHSkipped bool
	// AgentVersion when the agent answered.
	AgentVersion string
	// System is what the agent's answer said the host runs (nil when it did not
	// answer): a probe's caller needs no second Status call.
	System *SystemStatus
}

// Transport reaches one host.
type Transport interface {
	// Apply runs an operation to its end and reports how it ended.
	Apply(ctx context.Context, req ApplyRequest) (ApplyResult, error)
	// Status reports what the host runs.
	Status(ctx context.Context) (SystemStatus, error)
	// Facts returns the host's nixos-facter report (JSON).
	Facts(ctx context.Context) ([]byte, error)
	// Confirm keeps the system of an operation waiting for confirmation. It always
	// uses a new connection.
	Confirm(ctx context.Context, operationID string) error
	// Probe checks which ways to the host work.
	Probe(ctx context.Context) ProbeResult
}

// Errors the controllers tell apart.
var (
	// ErrUnreachable: the host could not be reached at all (dial or TLS failure).
	// The fallback transport tries the next way on it.
	ErrUnreachable = errors.New("host unreachable")
	// ErrHostKeyMismatch: the SSH host key differs from the pinned or recorded one.
	ErrHostKeyMismatch = errors.New("ssh host key mismatch")
	// ErrBusy: another operation runs on the host.
	ErrBusy = errors.New("host busy with another operation")
	// ErrSudoPassword: the SSH user's sudo asks for a password.
	ErrSudoPassword = errors.New("sudo requires a password")
	// ErrAuthFailed: the host refused the SSH login key.
	ErrAuthFailed = errors.New("ssh authentication failed")
	// ErrOutcomeUnknown: the connection to the agent broke after the operation began
	// and could not be re-established in time. The operation may still be running;
	// retry with the same operation id to attach to it (never fall back to SSH).
	ErrOutcomeUnknown = errors.New("connection lost during the operation; outcome unknown")
	// ErrTimeout: the operation did not end within the transport's wait (Timeout +
	// ConfirmTimeout + WaitMargin). The connection was closed; the agent ends the
	// operation itself at its own deadline.
	ErrTimeout = errors.New("operation timed out")
)

// DefaultWaitMargin is ApplyRequest.WaitMargin's default: time for the source
// transfer and for re-attaching after a dropped stream (the agent's
// ReconnectTimeout is 2m), beyond the operation's own bounds.
const DefaultWaitMargin = 5 * time.Minute

// WaitBound is how long a transport waits for req: Timeout + the health checks'
// timeout + ConfirmTimeout + WaitMargin; 0 (no bound) without a Timeout.
func (req ApplyRequest) WaitBound() time.Duration {
	if req.Timeout <= 0 {
		return 0
	}
	return req.Timeout + req.healthTimeout() + max(req.ConfirmTimeout, 0) + req.waitMargin()
}

func (req ApplyRequest) waitMargin() time.Duration {
	if req.WaitMargin <= 0 {
		return DefaultWaitMargin
	}
	return req.WaitMargin
}

// boundApply runs apply under req's wait bound and turns running out of it into
// an error wrapping ErrTimeout.
func boundApply(ctx context.Context, req ApplyRequest, apply func(context.Context) (ApplyResult, error)) (ApplyResult, error) {
	bound := req.WaitBound()
	if bound <= 0 {
		return apply(ctx)
	}
	var checks string
	if h := req.healthTimeout(); h > 0 {
		checks = fmt.Sprintf(", health checks %s", h)
	}
	cause := fmt.Errorf("%w after %s (timeout %s%s, confirm window %s, margin %s)", ErrTimeout, bound, req.Timeout, checks, max(req.ConfirmTimeout, 0), req.waitMargin())
	bctx, cancel := context.WithTimeoutCause(ctx, bound, cause)
	defer cancel()
	res, err := apply(bctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(bctx), ErrTimeout) {
		return res, fmt.Errorf("%w: %v", cause, err)
	}
	return res, err
}
