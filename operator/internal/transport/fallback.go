package transport

import (
	"context"
	"errors"
	"fmt"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Fallback tries the agent first and SSH when the agent can't be reached: a dial or
// TLS failure before the agent ever answered (ErrUnreachable). An agent that answered
// — a failed build, ErrBusy, a broken stream after the operation began
// (ErrOutcomeUnknown) — is never bypassed: running nixos-rebuild beside a running
// agent operation could activate two systems at once.
type Fallback struct {
	// Agent is nil when the Machine's agent is disabled.
	Agent Transport
	// SSH is nil when the Machine has no SSH key.
	SSH Transport
}

var _ Transport = (*Fallback)(nil)

func (f *Fallback) viaSSH(err error) bool {
	return f.SSH != nil && (f.Agent == nil || errors.Is(err, ErrUnreachable))
}

func (f *Fallback) none() error {
	return errors.New("no transport: the agent is disabled and the Machine has no SSH key")
}

// Apply runs the operation on the agent, or over SSH when the agent can't be
// reached; ApplyResult.Transport says which ran. A request with health checks never
// goes over SSH, which cannot run them: it is refused (ErrHealthChecksNeedAgent)
// before anything is uploaded, built or switched.
func (f *Fallback) Apply(ctx context.Context, req ApplyRequest) (ApplyResult, error) {
	var agentErr error
	if f.Agent != nil {
		res, err := f.Agent.Apply(ctx, req)
		if !f.viaSSH(err) {
			return res, err
		}
		agentErr = err
	}
	if f.SSH == nil {
		return ApplyResult{}, f.none()
	}
	if req.HealthChecks != nil {
		return ApplyResult{Transport: nio.TransportSSH}, RefuseHealthChecksOverSSH(agentErr)
	}
	res, err := f.SSH.Apply(ctx, req)
	if err != nil && agentErr != nil {
		return res, fmt.Errorf("%w (the agent was unreachable too: %v)", err, agentErr)
	}
	return res, err
}

// Status asks the agent, or SSH when the agent can't be reached.
func (f *Fallback) Status(ctx context.Context) (SystemStatus, error) {
	if f.Agent != nil {
		st, err := f.Agent.Status(ctx)
		if !f.viaSSH(err) {
			return st, err
		}
	}
	if f.SSH == nil {
		return SystemStatus{}, f.none()
	}
	return f.SSH.Status(ctx)
}

// Facts asks the agent, or SSH when the agent can't be reached.
func (f *Fallback) Facts(ctx context.Context) ([]byte, error) {
	if f.Agent != nil {
		b, err := f.Agent.Facts(ctx)
		if !f.viaSSH(err) {
			return b, err
		}
	}
	if f.SSH == nil {
		return nil, f.none()
	}
	return f.SSH.Facts(ctx)
}

// Confirm goes to the agent: only agent operations wait for a confirmation (SSH
// applies confirm themselves, see SSH.Apply).
func (f *Fallback) Confirm(ctx context.Context, operationID string) error {
	if f.Agent == nil {
		if f.SSH == nil {
			return f.none()
		}
		return f.SSH.Confirm(ctx, operationID)
	}
	return f.Agent.Confirm(ctx, operationID)
}

// hostKeyRecorder is an SSH way that knows whether the host key it will enforce is
// already pinned or recorded (SSH is).
type hostKeyRecorder interface {
	HostKeyRecorded() bool
}

// Probe reports the ways to the host. SSH is logged into only when it has something
// to tell: the agent does not answer (is SSH the way then?), or the host key is not
// recorded yet (the first login records it). An agent answering over mTLS proves the
// host reachable; a login per probe per Machine would be all the SSH traffic of an
// idle fleet. SSHSkipped says SSH was left alone.
func (f *Fallback) Probe(ctx context.Context) ProbeResult {
	var p ProbeResult
	if f.Agent != nil {
		a := f.Agent.Probe(ctx)
		p.AgentReachable, p.AgentError, p.AgentVersion, p.System = a.AgentReachable, a.AgentError, a.AgentVersion, a.System
	} else {
		p.AgentError = errors.New("the agent is disabled")
	}
	switch {
	case f.SSH == nil:
		p.SSHError = errors.New("the Machine has no SSH key")
	case p.AgentReachable && hostKeyRecorded(f.SSH):
		p.SSHSkipped = true
	default:
		s := f.SSH.Probe(ctx)
		p.SSHReachable, p.SSHError, p.SSHHostKeyFingerprint = s.SSHReachable, s.SSHError, s.SSHHostKeyFingerprint
	}
	return p
}

func hostKeyRecorded(t Transport) bool {
	k, ok := t.(hostKeyRecorder)
	return ok && k.HostKeyRecorded()
}
