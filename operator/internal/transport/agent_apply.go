package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	nio "github.com/homystack/nio/api/v1alpha1"
)

func grpcConnectParams(timeout time.Duration) grpc.ConnectParams {
	return grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: timeout}
}

// Reconnect backoff of Apply after a broken stream.
const (
	reconnectInitial = 100 * time.Millisecond
	reconnectMax     = 5 * time.Second
)

// applyState carries what survives a reconnect.
type applyState struct {
	req        ApplyRequest
	lastSeq    uint64 // last event sequence seen
	bytesSent  int64
	confirming sync.WaitGroup
	tail       *emitter
	everActive bool // some attempt reached the agent's handler
}

// Apply runs an operation on the agent. The source is sent only when the agent asks
// for it. When the stream breaks, Apply reconnects and sends the same header with
// resume_after_sequence, which attaches to the running operation — a second
// operation is never started. Only a failure before the agent ever answered is
// ErrUnreachable (the fallback may then use SSH); a failure after that is
// ErrOutcomeUnknown.
//
// That includes the agent being killed: systemd restarts it (RestartSec=5s), it
// recovers the operation from its journal under the same id before it listens, and
// the re-attach finds it — well inside ReconnectTimeout (2m by default), since the
// recovery itself waits for nothing before serving. A recovered operation opens a
// new confirm window, which OnAwaitingConfirm is called for again.
//
// With req.Timeout, Apply gives up after Timeout + the health checks' timeout +
// ConfirmTimeout + WaitMargin with an error wrapping ErrTimeout: a hung or silent
// agent cannot hold the caller.
//
// With req.HealthChecks, the agent's Status must list FeatureHealthChecks first: an
// older agent would ignore the checks and activate unchecked, so it gets nothing
// (ErrHealthChecksNeedAgent). A result that claims success without a passing health
// report is Failed.
func (a *Agent) Apply(ctx context.Context, req ApplyRequest) (ApplyResult, error) {
	return boundApply(ctx, req, func(ctx context.Context) (ApplyResult, error) {
		if req.HealthChecks != nil {
			if err := a.requireHealthChecks(ctx); err != nil {
				return ApplyResult{Transport: nio.TransportAgent}, err
			}
		}
		return a.apply(ctx, req)
	})
}

// requireHealthChecks asks the agent whether it runs health checks. Its errors are
// Status's: an unreachable agent is ErrUnreachable, and nothing started.
func (a *Agent) requireHealthChecks(ctx context.Context) error {
	st, err := a.Status(ctx)
	if err != nil {
		return err
	}
	if !slices.Contains(st.Features, FeatureHealthChecks) {
		return RefuseHealthChecksOnOldAgent(a.cfg.Address, st.AgentVersion)
	}
	return nil
}

func (a *Agent) apply(ctx context.Context, req ApplyRequest) (ApplyResult, error) {
	header, err := applyHeader(req)
	if err != nil {
		return ApplyResult{Transport: nio.TransportAgent}, err
	}
	return a.applyWith(ctx, req, header)
}

// applyWith runs the operation header describes, with req's callbacks and
// secrets, re-attaching after broken streams (see Apply).
func (a *Agent) applyWith(ctx context.Context, req ApplyRequest, header *agentv1.ApplyHeader) (ApplyResult, error) {
	res := ApplyResult{Transport: nio.TransportAgent}
	st := &applyState{req: req, tail: newEmitter(req.OnEvent)}
	// The confirmation callback finishes before Apply returns, whatever happens.
	defer st.confirming.Wait()
	delay := reconnectInitial
	var deadline time.Time
	for {
		r, broken, err := a.applyOnce(ctx, header, st)
		res.SourceBytesSent = st.bytesSent
		if err == nil {
			st.confirming.Wait()
			r.Transport, r.SourceBytesSent, r.LogTail = nio.TransportAgent, st.bytesSent, st.tail.tail()
			return r, nil
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("agent %s apply %s: %w", a.cfg.Address, req.OperationID, ctx.Err())
		}
		if !broken {
			if st.everActive && errors.Is(err, ErrUnreachable) {
				// The operation may be running: never let the fallback see it.
				return res, fmt.Errorf("agent %s apply %s: %w (%v)", a.cfg.Address, req.OperationID, ErrOutcomeUnknown, err)
			}
			return res, err
		}
		if !st.everActive {
			// Never reached a handler: nothing runs on the host.
			return res, err
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(a.cfg.ReconnectTimeout)
		}
		if time.Now().Add(delay).After(deadline) {
			// %v, not %w: the last attempt's ErrUnreachable must not reach the
			// fallback, which would start nixos-rebuild beside the running operation.
			return res, fmt.Errorf("agent %s apply %s: %w (gave up re-attaching after %s: %v)", a.cfg.Address, req.OperationID, ErrOutcomeUnknown, a.cfg.ReconnectTimeout, err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, fmt.Errorf("agent %s apply %s: %w", a.cfg.Address, req.OperationID, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, reconnectMax)
	}
}

func applyHeader(req ApplyRequest) (*agentv1.ApplyHeader, error) {
	if req.OperationID == "" {
		return nil, errors.New("apply: an operation id is required")
	}
	h := &agentv1.ApplyHeader{
		OperationId:  req.OperationID,
		Commit:       req.Commit,
		SourceDigest: req.Source.Digest,
		SourceSize:   req.Source.Size,
	}
	switch req.Action {
	case ActionSwitch:
		h.Action = agentv1.Action_ACTION_SWITCH
	case ActionBoot:
		h.Action = agentv1.Action_ACTION_BOOT
	case ActionTest:
		h.Action = agentv1.Action_ACTION_TEST
	case ActionDryActivate:
		h.Action = agentv1.Action_ACTION_DRY_ACTIVATE
	case ActionBuild:
		h.Action = agentv1.Action_ACTION_BUILD
	default:
		return nil, fmt.Errorf("apply: unknown action %q", req.Action)
	}
	switch t := req.Target; {
	case t.FlakeAttr != "" && t.ModuleFile == "":
		dir := t.FlakeDir
		if dir == "" {
			dir = "."
		}
		h.Target = &agentv1.ApplyHeader_Flake{Flake: &agentv1.FlakeTarget{Dir: dir, Attr: t.FlakeAttr}}
	case t.ModuleFile != "" && t.FlakeAttr == "":
		h.Target = &agentv1.ApplyHeader_Module{Module: &agentv1.ModuleTarget{Path: t.ModuleFile}}
	default:
		return nil, errors.New("apply: target needs exactly one of a flake attribute and a module file")
	}
	if req.ConfirmTimeout > 0 {
		h.ConfirmTimeout = durationpb.New(req.ConfirmTimeout)
	}
	if req.Secrets != nil {
		h.Secrets = &agentv1.SecretsManifest{Count: uint32(len(req.Secrets.Files)), Digest: req.Secrets.Digest}
	}
	if req.Timeout > 0 {
		h.OperationTimeout = durationpb.New(req.Timeout)
	}
	h.HealthChecks = healthChecksProto(req.HealthChecks)
	return h, nil
}

// sendSecrets sends the SecretFiles the header announced, right after it: the agent
// reads them before anything else, on every stream of the operation (an attach
// reads and drops them), so the client never waits for an answer in between.
func sendSecrets(stream agentv1.AgentService_ApplyClient, req ApplyRequest) error {
	if req.Secrets == nil {
		return nil
	}
	for _, f := range req.Secrets.Files {
		msg := &agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Secret{Secret: &agentv1.SecretFile{
			Path: f.Path, Data: f.Data, Mode: f.Mode, Owner: f.Owner, Group: f.Group,
		}}}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}

// applyOnce is one Apply stream, on the pool's connection or a new one; after a
// broken stream the pool's is dropped, so a re-attach dials anew. broken says the
// stream failed in transport (worth re-attaching), as opposed to an answer from the
// agent.
func (a *Agent) applyOnce(ctx context.Context, header *agentv1.ApplyHeader, st *applyState) (res ApplyResult, broken bool, err error) {
	// On a reused connection that broke before the agent's first answer the header
	// may or may not have arrived: like a broken new connection, that is never
	// "unreachable" (no SSH beside the operation), and the re-attach dials anew.
	c, release, _, err := a.conn()
	if err != nil {
		return res, false, err
	}
	defer func() { release(err) }()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var p peer.Peer // filled when the stream ends
	stream, err := c.client.Apply(sctx, grpc.Peer(&p))
	if err != nil {
		return res, isBroken(ctx, err), a.classify("apply", c, &p, err)
	}
	h := proto.CloneOf(header)
	h.ResumeAfterSequence = st.lastSeq
	err = stream.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Header{Header: h}})
	if err == nil {
		err = sendSecrets(stream, st.req)
	}
	if err != nil {
		// The real reason arrives on Recv.
		_, err = stream.Recv()
		return res, isBroken(ctx, err), a.classify("apply", c, &p, eofAsBroken(err))
	}
	first := true
	for {
		resp, err := stream.Recv()
		if err != nil {
			err = eofAsBroken(err)
			if reached(&p) && status.Code(err) != codes.Aborted && status.Code(err) != codes.InvalidArgument {
				// The agent answered this connection: the header may have started
				// the operation, so a later failure must never fall back to SSH.
				st.everActive = true
			}
			return res, isBroken(ctx, err), a.classify("apply "+header.GetOperationId(), c, &p, err)
		}
		st.everActive = true
		seq := resp.GetSequence()
		if first && seq <= st.lastSeq {
			// An attach replays only later events, so an early sequence means the
			// agent started the operation afresh (it had dropped an interrupted
			// source transfer, or lost its journal). Follow the new run from its
			// start; a confirm window in it is a new one.
			st.tail.emit(Event{Kind: EventLog, Line: "the agent restarted the operation; following it from the start"})
			st.lastSeq = 0
		}
		first = false
		if seq != 0 && seq <= st.lastSeq {
			continue // already relayed
		}
		st.lastSeq = seq
		var when time.Time
		if resp.GetTime() != nil {
			when = resp.GetTime().AsTime()
		}
		switch ev := resp.GetEvent().(type) {
		case *agentv1.ApplyResponse_NeedSource:
			if err := a.sendSource(stream, st); err != nil {
				return res, true, err
			}
		case *agentv1.ApplyResponse_Phase:
			p := phaseOf(ev.Phase.GetPhase())
			st.tail.emit(Event{Kind: EventPhase, Sequence: seq, Time: when, Phase: p, Detail: ev.Phase.GetDetail()})
			if p == PhaseAwaitingConfirm && st.req.OnAwaitingConfirm != nil {
				// In its own goroutine: the agent answers Confirm only when the
				// operation has ended, and that end arrives on this stream, which
				// must keep being read meanwhile.
				//
				// Once per AWAITING_CONFIRM relayed. Each is relayed once (see the
				// sequence checks above) and the agent opens one window per run of
				// an operation; a second one is the fresh window of an operation
				// it recovered after a restart, or re-ran from the start, and the
				// earlier Confirm died with the old window. Its goroutine may still
				// be failing; that only logs, and the WaitGroup waits for both.
				st.confirming.Add(1)
				go func() {
					defer st.confirming.Done()
					if err := st.req.OnAwaitingConfirm(ctx, header.GetOperationId()); err != nil {
						st.tail.emit(Event{Kind: EventLog, Line: "confirm failed: " + err.Error()})
					}
				}()
			}
		case *agentv1.ApplyResponse_Log:
			st.tail.emit(Event{Kind: EventLog, Sequence: seq, Time: when, Line: ev.Log.GetText(), Stderr: ev.Log.GetStream() == agentv1.LogStream_LOG_STREAM_STDERR})
		case *agentv1.ApplyResponse_Result:
			r := ev.Result
			out := ApplyResult{
				Outcome:    outcomeOf(r.GetOutcome()),
				Message:    r.GetMessage(),
				Generation: r.GetGeneration(),
				StorePath:  r.GetStorePath(),
				TimedOut:   r.GetTimedOut(),
				Health:     healthReportOf(r.GetHealth()),
			}
			if st.req.HealthChecks != nil {
				if invalid := asInvalidHealthChecks(out.Message); invalid != nil && out.Outcome == OutcomeFailed {
					// Refused before anything was built: the same checks never pass.
					return res, false, fmt.Errorf("agent %s apply %s: %w", a.cfg.Address, header.GetOperationId(), invalid)
				}
				if out.Outcome == OutcomeSucceeded && (out.Health == nil || !out.Health.Passed) {
					// An agent that took the header but did not run the checks (or
					// reports them failed and yet kept the system): never applied.
					out.Outcome = OutcomeFailed
					out.Message = "the agent reported success without a passing health report although health checks were sent; " +
						"the new system may be active unchecked: upgrade nio-agent on the host"
				}
			}
			if s := st.req.Secrets; s != nil && len(s.Files) > 0 && out.Outcome == OutcomeSucceeded && r.GetSecretsDigest() != s.Digest {
				// An agent from before secret delivery ignores the manifest: the
				// system runs, but without its secrets. Never count that as applied.
				out.Outcome = OutcomeFailed
				out.Message = "the agent did not install the secrets (secretRef files); it predates their delivery: upgrade nio-agent on the host"
			}
			return out, false, nil
		}
	}
}

// sendSource streams the archive in chunks.
func (a *Agent) sendSource(stream agentv1.AgentService_ApplyClient, st *applyState) error {
	if st.req.Source.Open == nil {
		return errors.New("the agent asked for the source, but the request has none")
	}
	rc, err := st.req.Source.Open()
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	defer rc.Close()
	// A source smaller than a chunk (most are: a flake's files) gets a buffer of its
	// size: a hundred applies in flight must not each hold 256 KiB for 9 KB.
	size := a.cfg.ChunkSize
	if n := st.req.Source.Size; n > 0 && n < int64(size) {
		size = int(n) + 1 // one byte more: the read that fills it then sees EOF
	}
	buf := make([]byte, size)
	for {
		n, rerr := io.ReadFull(rc, buf)
		if n > 0 {
			chunk := &agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Chunk{Chunk: &agentv1.SourceChunk{Data: buf[:n]}}}
			if err := stream.Send(chunk); err != nil {
				// The stream broke; Recv in the caller's next round reports why.
				return nil
			}
			st.bytesSent += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("read source: %w", rerr)
		}
	}
}

// eofAsBroken turns an EOF before the result into a transport failure.
func eofAsBroken(err error) error {
	if errors.Is(err, io.EOF) {
		return status.Error(codes.Unavailable, "stream ended before the result")
	}
	return err
}

// isBroken says whether err is the connection failing rather than the agent's answer.
func isBroken(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded:
		return true
	}
	return false
}

func phaseOf(p agentv1.Phase) Phase {
	switch p {
	case agentv1.Phase_PHASE_RECEIVING_SOURCE:
		return PhaseReceivingSource
	case agentv1.Phase_PHASE_UNPACKING:
		return PhaseUnpacking
	case agentv1.Phase_PHASE_BUILDING:
		return PhaseBuilding
	case agentv1.Phase_PHASE_SETTING_PROFILE:
		return PhaseSettingProfile
	case agentv1.Phase_PHASE_ACTIVATING:
		return PhaseActivating
	case agentv1.Phase_PHASE_HEALTH_CHECKING:
		return PhaseHealthChecking
	case agentv1.Phase_PHASE_AWAITING_CONFIRM:
		return PhaseAwaitingConfirm
	case agentv1.Phase_PHASE_ROLLING_BACK:
		return PhaseRollingBack
	case agentv1.Phase_PHASE_DONE:
		return PhaseDone
	}
	return Phase(p.String())
}
