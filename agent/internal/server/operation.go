package server

import (
	"context"
	"sync"
	"time"

	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// operation is one Apply: its header, every event it emitted (so any number of
// streams can attach and replay), and its confirm handshake.
type operation struct {
	id     string
	header *agentv1.ApplyHeader
	// base is added to every sequence: 0, or incarnation<<32 for an operation this
	// agent recovered from its journal after a restart (see replayFrom).
	base uint64
	// jr is the operation's journal, from its first step on; only the goroutine
	// that drives the operation (execute or resume) touches it.
	jr *journal
	// secrets are the operation's SecretFiles, from the Apply stream until
	// execute writes them to the secrets directory (secrets.go); never journaled.
	secrets []*agentv1.SecretFile
	// deadline bounds the build, the profile and the start of the activation
	// (header.operation_timeout from when the header arrived; kept in the journal
	// across restarts). Zero: none.
	deadline time.Time

	mu      sync.Mutex
	events  []*agentv1.ApplyResponse // events[i].Sequence == base+i+1
	changed chan struct{}            // closed and replaced on every event
	summary *agentv1.OperationSummary
	result  *agentv1.ApplyResult

	awaiting  bool          // in PHASE_AWAITING_CONFIRM, Confirm accepted
	confirmed bool          // Confirm arrived while awaiting
	confirmCh chan struct{} // closed by Confirm
	doneCh    chan struct{} // closed with the result
}

func newOperation(h *agentv1.ApplyHeader, now time.Time) *operation {
	var deadline time.Time
	if d := h.GetOperationTimeout().AsDuration(); h.GetOperationTimeout() != nil && d > 0 {
		deadline = now.Add(d)
	}
	return &operation{
		id:        h.GetOperationId(),
		header:    h,
		deadline:  deadline,
		changed:   make(chan struct{}),
		confirmCh: make(chan struct{}),
		doneCh:    make(chan struct{}),
		summary: &agentv1.OperationSummary{
			OperationId: h.GetOperationId(),
			Commit:      h.GetCommit(),
			Action:      h.GetAction(),
			StartedTime: timestamppb.New(now),
		},
	}
}

// emit records an event with the next sequence number and wakes the streams.
func (o *operation) emit(ev *agentv1.ApplyResponse) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.result != nil {
		return // the result is always the last event
	}
	ev.Sequence = o.base + uint64(len(o.events)+1)
	ev.Time = timestamppb.Now()
	ev.OperationId = o.id
	o.events = append(o.events, ev)
	switch e := ev.Event.(type) {
	case *agentv1.ApplyResponse_Phase:
		o.summary.Phase = e.Phase.GetPhase()
	case *agentv1.ApplyResponse_Result:
		o.result = e.Result
		o.summary.Outcome = e.Result.GetOutcome()
		o.summary.Message = e.Result.GetMessage()
		o.summary.Generation = e.Result.GetGeneration()
		o.summary.StorePath = e.Result.GetStorePath()
		if o.summary.FinishedTime == nil { // set ahead for a result read from the journal
			o.summary.FinishedTime = ev.Time
		}
		o.awaiting = false
		close(o.doneCh)
	}
	close(o.changed)
	o.changed = make(chan struct{})
}

func (o *operation) phase(p agentv1.Phase, detail string) {
	o.emit(&agentv1.ApplyResponse{Event: &agentv1.ApplyResponse_Phase{Phase: &agentv1.PhaseEvent{Phase: p, Detail: detail}}})
}

func (o *operation) agentLine(text string) {
	o.emit(logEvent(agentv1.LogStream_LOG_STREAM_AGENT, text))
}

// logLine is the nixos.LineFunc that turns a step's output into log events.
func (o *operation) logLine(s nixos.Stream, text string) {
	stream := agentv1.LogStream_LOG_STREAM_AGENT
	switch s {
	case nixos.Stdout:
		stream = agentv1.LogStream_LOG_STREAM_STDOUT
	case nixos.Stderr:
		stream = agentv1.LogStream_LOG_STREAM_STDERR
	}
	o.emit(logEvent(stream, text))
}

func logEvent(s agentv1.LogStream, text string) *agentv1.ApplyResponse {
	return &agentv1.ApplyResponse{Event: &agentv1.ApplyResponse_Log{Log: &agentv1.LogLine{Stream: s, Text: text}}}
}

// finish hands the final summary to persist, then emits PHASE_DONE and the result.
// Persisting first means that whoever sees the result also finds it on disk.
func (o *operation) finish(r *agentv1.ApplyResult, persist func(*agentv1.OperationSummary)) {
	o.mu.Lock()
	sum := proto.Clone(o.summary).(*agentv1.OperationSummary)
	o.mu.Unlock()
	sum.Phase = agentv1.Phase_PHASE_DONE
	sum.Outcome, sum.Message = r.GetOutcome(), r.GetMessage()
	sum.Generation, sum.StorePath = r.GetGeneration(), r.GetStorePath()
	if sum.FinishedTime == nil {
		sum.FinishedTime = timestamppb.Now()
	}
	persist(sum)
	o.phase(agentv1.Phase_PHASE_DONE, r.GetOutcome().String())
	o.emit(&agentv1.ApplyResponse{Event: &agentv1.ApplyResponse_Result{Result: r}})
}

// done reports whether the result was emitted.
func (o *operation) done() bool {
	select {
	case <-o.doneCh:
		return true
	default:
		return false
	}
}

// snapshot copies the summary for Status.
func (o *operation) snapshot() *agentv1.OperationSummary {
	o.mu.Lock()
	defer o.mu.Unlock()
	return proto.Clone(o.summary).(*agentv1.OperationSummary)
}

// sendEmitted sends the events emitted so far and returns the last sequence sent.
func (o *operation) sendEmitted(send func(*agentv1.ApplyResponse) error) (uint64, error) {
	o.mu.Lock()
	batch := append([]*agentv1.ApplyResponse(nil), o.events...)
	o.mu.Unlock()
	var last uint64
	for _, ev := range batch {
		if err := send(ev); err != nil {
			return last, err
		}
		last = ev.Sequence
	}
	return last, nil
}

// follow sends the events after sequence `after` (see replayFrom), then each new
// one, until the result has been sent or ctx ends. The operation does not depend on
// anyone following it.
func (o *operation) follow(ctx context.Context, after uint64, send func(*agentv1.ApplyResponse) error) error {
	next := o.replayFrom(after)
	for {
		o.mu.Lock()
		var batch []*agentv1.ApplyResponse
		if next < len(o.events) {
			batch = o.events[next:]
		}
		finished := o.result != nil
		changed := o.changed
		o.mu.Unlock()
		for _, ev := range batch {
			if err := send(ev); err != nil {
				return err
			}
			next++
		}
		if finished && len(batch) == 0 {
			return nil
		}
		if len(batch) > 0 {
			continue // re-check: more may have arrived while sending
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// replayFrom is the index of the first event an attach with resume_after_sequence
// `after` gets. Normally the events after `after`. But a client that followed an
// earlier incarnation of a recovered operation knows only sequences below base, so
// it gets the whole new incarnation; and a sequence beyond anything this incarnation
// emitted can only come from one the agent no longer knows (its journal was lost), so
// that client gets everything too — it then sees a sequence it has passed and
// follows the operation from the start, as after a restarted transfer.
func (o *operation) replayFrom(after uint64) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	if after <= o.base || after-o.base > uint64(len(o.events)) {
		return 0
	}
	return int(after - o.base)
}

// openConfirmWindow makes Confirm acceptable. It runs before the AWAITING_CONFIRM
// event is emitted, so an operator reacting to that event at once is never early.
func (o *operation) openConfirmWindow() {
	o.mu.Lock()
	o.awaiting = true
	o.mu.Unlock()
}

// waitConfirm waits until Confirm or the deadline and reports whether the operation
// was confirmed; after it returns, Confirm no longer changes the outcome.
func (o *operation) waitConfirm(deadline time.Time) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-o.confirmCh:
	case <-timer.C:
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.awaiting = false
	return o.confirmed
}

// confirm accepts a Confirm. ok is false when the operation is not awaiting one.
func (o *operation) confirm() (ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.awaiting {
		return false
	}
	o.awaiting, o.confirmed = false, true
	close(o.confirmCh)
	return true
}

// outcome is the result's outcome, unspecified while running.
func (o *operation) outcome() agentv1.Outcome {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.summary.GetOutcome()
}
