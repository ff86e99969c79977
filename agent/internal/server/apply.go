package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/homystack/nio/agent/internal/archive"
	"github.com/homystack/nio/agent/internal/health"
	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Apply implements AgentService. See proto/README.md for the protocol.
func (s *Server) Apply(stream agentv1.AgentService_ApplyServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	h := req.GetHeader()
	if h == nil {
		return status.Error(codes.InvalidArgument, "the first Apply message must be the header")
	}
	if err := validateHeader(h); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if h.GetSecrets().GetCount() > 0 && s.cfg.SecretsDir == "" {
		return status.Error(codes.FailedPrecondition, "this agent has no --secrets-dir; it cannot take secrets")
	}
	// The secrets follow the header on every stream, before anything else: read
	// them first (an attach drops them), so the client never waits in between.
	// Nothing is registered or written before they all arrived and passed the
	// checks, so a broken or refused transfer leaves nothing behind.
	secrets, err := s.receiveSecrets(stream, h.GetSecrets())
	if err != nil {
		var streamErr *streamError
		if errors.As(err, &streamErr) {
			return streamErr.err
		}
		return status.Error(codes.InvalidArgument, err.Error())
	}
	op, attached, err := s.begin(h)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	if attached {
		s.log.Info("attach", "operation", op.id, "resume_after", h.GetResumeAfterSequence())
		return op.follow(ctx, h.GetResumeAfterSequence(), stream.Send)
	}
	op.secrets = secrets
	if msg := invalidHealthChecks(h, health.HostAddrs); msg != "" {
		// Before the source is asked for: nothing is built for checks that
		// cannot run, and a system activated without them would go unchecked.
		s.fail(op, msg)
		return op.follow(ctx, 0, stream.Send)
	}

	if h.GetGeneration() != nil {
		// Nothing to receive: the profile holds the system (generation.go).
		s.log.Info("operation start", "operation", op.id, "action", h.GetAction().String(), "generation", h.GetGeneration().GetGeneration())
		go s.executeGeneration(op)
		return op.follow(ctx, 0, stream.Send)
	}
	s.log.Info("operation start", "operation", op.id, "action", h.GetAction().String(), "commit", h.GetCommit())
	op.phase(agentv1.Phase_PHASE_RECEIVING_SOURCE, h.GetSourceDigest())
	archivePath, known := s.cache.Path(h.GetSourceDigest())
	if known {
		op.agentLine("source " + h.GetSourceDigest() + " already held")
	} else {
		op.emit(&agentv1.ApplyResponse{Event: &agentv1.ApplyResponse_NeedSource{NeedSource: &agentv1.NeedSource{SourceDigest: h.GetSourceDigest()}}})
	}
	// Only this goroutine ever sends on the stream: gRPC forbids a Send after the
	// handler returned, and a second sending goroutine could still be in one on any
	// early return. Nothing else emits before execute starts, so sending what there
	// is now, then reading the chunks, then following, loses nothing.
	sent, err := op.sendEmitted(stream.Send)
	if err != nil {
		s.forget(op) // nothing ran; a retry with the same id starts over
		return err
	}
	if !known {
		archivePath, err = s.receive(stream, h)
		var streamErr *streamError
		if errors.As(err, &streamErr) {
			// The transfer broke, not the source: forget the operation so the
			// operator's retry with the same id starts over instead of attaching
			// to a failure it did not cause.
			s.forget(op)
			return streamErr.err
		}
		if err != nil {
			s.fail(op, err.Error())
			return op.follow(ctx, sent, stream.Send)
		}
	}
	go s.execute(op, archivePath)
	return op.follow(ctx, sent, stream.Send)
}

// begin registers a new operation, or finds the one to attach to.
func (s *Server) begin(h *agentv1.ApplyHeader) (op *operation, attached bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if op := s.ops[h.GetOperationId()]; op != nil {
		return op, true, nil
	}
	if s.draining {
		return nil, false, errDraining
	}
	if s.running != nil && !s.running.done() {
		return nil, false, status.Errorf(codes.Aborted, "operation %q is running; one operation at a time", s.running.id)
	}
	op = newOperation(h, time.Now())
	s.ops[op.id] = op
	s.order = append(s.order, op.id)
	s.running = op
	for len(s.order) > keptOperations {
		delete(s.ops, s.order[0])
		s.order = s.order[1:]
	}
	return op, false, nil
}

func (s *Server) forget(op *operation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ops, op.id)
	for i, id := range s.order {
		if id == op.id {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
	if s.running == op {
		s.running = nil
	}
}

type streamError struct{ err error }

func (e *streamError) Error() string { return e.err.Error() }

// receive reads SourceChunks into the cache until the announced size (or the end of
// the client's stream), verifying size and digest as it goes.
func (s *Server) receive(stream agentv1.AgentService_ApplyServer, h *agentv1.ApplyHeader) (string, error) {
	w, err := s.cache.Create(h.GetSourceDigest(), h.GetSourceSize())
	if err != nil {
		return "", err
	}
	defer w.Abort()
	var n int64
	for h.GetSourceSize() <= 0 || n < h.GetSourceSize() {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", &streamError{err}
		}
		chunk := req.GetChunk()
		if chunk == nil {
			return "", errors.New("expected a SourceChunk after NeedSource")
		}
		if _, err := w.Write(chunk.GetData()); err != nil {
			return "", err
		}
		n += int64(len(chunk.GetData()))
	}
	return w.Commit()
}

func validateHeader(h *agentv1.ApplyHeader) error {
	if h.GetOperationId() == "" {
		return errors.New("operation_id is required")
	}
	if g := h.GetGeneration(); g != nil {
		return validateGenerationHeader(h, g)
	}
	if err := archive.ParseDigest(h.GetSourceDigest()); err != nil {
		return err
	}
	switch h.GetAction() {
	case agentv1.Action_ACTION_SWITCH, agentv1.Action_ACTION_BOOT, agentv1.Action_ACTION_TEST,
		agentv1.Action_ACTION_DRY_ACTIVATE, agentv1.Action_ACTION_BUILD:
	default:
		return fmt.Errorf("unknown action %v", h.GetAction())
	}
	if n := h.GetSecrets().GetCount(); n > maxSecretFiles {
		return fmt.Errorf("%d secrets, more than %d", n, maxSecretFiles)
	}
	switch t := h.GetTarget().(type) {
	case *agentv1.ApplyHeader_Flake:
		if _, err := nixos.ToplevelAttrPath(t.Flake.GetAttr()); err != nil {
			return err
		}
		if _, err := relPath(t.Flake.GetDir(), true); err != nil {
			return fmt.Errorf("flake dir: %w", err)
		}
	case *agentv1.ApplyHeader_Module:
		if _, err := relPath(t.Module.GetPath(), false); err != nil {
			return fmt.Errorf("module path: %w", err)
		}
	default:
		return errors.New("a flake, module or generation target is required")
	}
	return nil
}

// relPath checks a path inside the source tree: relative, no "..", no characters
// that change the meaning of a path: flake reference.
func relPath(p string, allowRoot bool) (string, error) {
	if p == "" && allowRoot {
		p = "."
	}
	clean := path.Clean(p)
	if p == "" || path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "../") || strings.ContainsAny(p, "#?\x00") {
		return "", fmt.Errorf("%q must be a relative path inside the source", p)
	}
	if clean == "." && !allowRoot {
		return "", fmt.Errorf("%q must name a file", p)
	}
	return clean, nil
}

// opDir is the operation's private work directory; the id is hashed so any id is a
// safe file name.
func (s *Server) opDir(id string) string {
	return filepath.Join(s.cfg.StateDir, "ops", opHash(id))
}

func opHash(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:8])
}

// keptSources is how many source archives the cache keeps; older ones are sent again
// if ever needed.
const keptSources = 16

// pruneWorkDirs removes the work directories of earlier operations (only one runs at
// a time). Their out-links are GC roots, so this also lets nix collect systems that
// no profile generation holds.
func (s *Server) pruneWorkDirs(op *operation) {
	keep := filepath.Base(s.opDir(op.id))
	entries, err := os.ReadDir(filepath.Join(s.cfg.StateDir, "ops"))
	if err != nil {
		s.log.Warn("prune work dirs", "err", err)
		return
	}
	for _, e := range entries {
		if e.Name() != keep {
			if err := os.RemoveAll(filepath.Join(s.cfg.StateDir, "ops", e.Name())); err != nil {
				s.log.Warn("prune work dir", "dir", e.Name(), "err", err)
			}
		}
	}
}

func (s *Server) fail(op *operation, msg string) {
	s.log.Warn("operation failed", "operation", op.id, "reason", msg)
	current, _ := s.cfg.Executor.CurrentSystem()
	gen, _ := s.cfg.Executor.Generation()
	s.finishOp(op, &agentv1.ApplyResult{Outcome: agentv1.Outcome_OUTCOME_FAILED, Message: msg, Generation: gen, CurrentSystem: current})
}

// step records that the operation is about to take step name (journal.go) and
// marks the point where tests kill the agent.
func (s *Server) step(op *operation, name string) error {
	op.jr.Step = name
	if err := s.writeJournal(op.jr); err != nil {
		return err
	}
	s.crashPoint(name)
	return nil
}

// crashPoint is where a test's agent "dies" (Config.crashAt blocks forever).
func (s *Server) crashPoint(name string) {
	if s.cfg.crashAt != nil {
		s.cfg.crashAt(name)
	}
}

// newActivation names a fresh activation of op: a transient unit name that is unique
// per run, its files in the operation's work dir.
func (s *Server) newActivation(op *operation) nixos.Activation {
	return s.activation(op, fmt.Sprintf("nio-activate-%s-%d", opHash(op.id), time.Now().UnixNano()))
}

func (s *Server) activation(op *operation, unit string) nixos.Activation {
	return nixos.Activation{Unit: unit, Dir: s.opDir(op.id)}
}

// execute runs the operation's steps. It does not depend on any Apply stream: a
// dropped connection neither stops a build nor skips a rollback. Each step that
// changes the host is journaled first (journal.go), so an agent killed anywhere
// finishes the operation consistently after its restart (recover.go).
//
// The operation's deadline (operation_timeout) bounds what can be stopped safely:
// the build is cancelled when it runs out (nixos.run kills its whole process tree),
// setting the profile too (then undone), and no activation starts after it. An
// activation that has started is never interrupted nor abandoned — a
// half-activated system is worse than a late one, and abandoning it would let the
// next operation activate beside it — so it runs under ctx, which has no deadline;
// switch-to-configuration is bounded by systemd's own job timeouts. Rollbacks, too,
// always run to their end.
func (s *Server) execute(op *operation, archivePath string) {
	ctx := context.Background()
	bctx, cancel := ctx, context.CancelFunc(func() {})
	if !op.deadline.IsZero() {
		bctx, cancel = context.WithDeadline(ctx, op.deadline)
	}
	defer cancel()
	h := op.header
	defer s.recoverPanic(op)
	s.writeRecord(op.snapshot())
	op.jr = newJournal(h, op.snapshot().GetStartedTime().AsTime(), op.deadline)
	if err := s.step(op, stepBuilding); err != nil {
		s.fail(op, err.Error())
		return
	}
	s.pruneWorkDirs(op)
	if err := s.cache.Prune(keptSources, archivePath); err != nil {
		s.log.Warn("prune source cache", "err", err)
	}
	s.pruneSecrets()
	if !activates(h.GetAction()) {
		op.secrets = nil // build and dry-activate leave the secrets as they are
	} else if err := s.stageSecrets(op); err != nil {
		s.fail(op, "secrets: "+err.Error())
		return
	}

	dir := s.opDir(op.id)
	src := filepath.Join(dir, "src")
	op.phase(agentv1.Phase_PHASE_UNPACKING, "")
	if err := os.RemoveAll(dir); err != nil {
		s.fail(op, fmt.Sprintf("clean work dir: %v", err))
		return
	}
	if err := os.MkdirAll(src, 0o700); err != nil || os.Chmod(dir, 0o700) != nil {
		s.fail(op, fmt.Sprintf("make work dir: %v", err))
		return
	}
	if err := archive.Unpack(archivePath, src, s.cfg.MaxSourceBytes); err != nil {
		s.fail(op, err.Error())
		return
	}

	x := s.cfg.Executor
	prevGen, prevSystem, ok := s.previousSystem(op)
	if !ok {
		return
	}

	var target nixos.Target
	if f := h.GetFlake(); f != nil {
		rel, _ := relPath(f.GetDir(), true)
		target = nixos.Target{FlakeDir: filepath.Join(src, filepath.FromSlash(rel)), Attr: f.GetAttr()}
	} else {
		rel, _ := relPath(h.GetModule().GetPath(), false)
		target = nixos.Target{ModuleFile: filepath.Join(src, filepath.FromSlash(rel))}
	}
	op.phase(agentv1.Phase_PHASE_BUILDING, "")
	out, err := x.Build(bctx, target, filepath.Join(dir, "result"), op.logLine)
	if err != nil && bctx.Err() != nil {
		s.timedOut(ctx, op, "while building")
		return
	}
	if err != nil {
		s.fail(op, fmt.Sprintf("build failed: %v", err))
		return
	}
	op.agentLine("built " + out)
	op.jr.PreviousGeneration, op.jr.PreviousSystem, op.jr.StorePath = prevGen, prevSystem, out
	if err := s.takeHealthBaseline(bctx, op); err != nil {
		if bctx.Err() != nil {
			s.timedOut(ctx, op, "while listing the failed units for the health checks")
			return
		}
		s.fail(op, fmt.Sprintf("health checks: list the units failed before the activation: %v; nothing was activated", err))
		return
	}

	s.commit(ctx, bctx, op, out, func(ctx context.Context) error { return x.SetProfile(ctx, out, op.logLine) })
}

// commit changes the host to the system at store path out, once the operation has
// it (built, or a generation the profile holds): setProfile makes it the profile's
// generation (switch and boot), then it is activated, checked and confirmed, or
// rolled back. ctx has no deadline; bctx is the operation's (see execute).
func (s *Server) commit(ctx, bctx context.Context, op *operation, out string, setProfile func(context.Context) error) {
	x := s.cfg.Executor
	h := op.header
	// The commit point: from here on the journal must be on disk before the host
	// changes, or the step does not run.
	action := h.GetAction()
	if action == agentv1.Action_ACTION_SWITCH || action == agentv1.Action_ACTION_BOOT {
		if bctx.Err() != nil {
			s.timedOut(ctx, op, "after the build, before setting the system profile")
			return
		}
		op.phase(agentv1.Phase_PHASE_SETTING_PROFILE, out)
		if err := s.step(op, stepSettingProfile); err != nil {
			s.fail(op, err.Error())
			return
		}
		if err := setProfile(bctx); err != nil {
			if bctx.Err() != nil {
				s.timedOut(ctx, op, "while setting the system profile")
				return
			}
			s.fail(op, fmt.Sprintf("set system profile: %v", err))
			return
		}
		s.crashPoint("profile-set")
	}
	if action != agentv1.Action_ACTION_BUILD {
		if bctx.Err() != nil {
			s.timedOut(ctx, op, "before the activation")
			return
		}
		act := s.newActivation(op)
		op.jr.Unit = act.Unit
		op.phase(agentv1.Phase_PHASE_ACTIVATING, actionWord(action))
		if err := s.step(op, stepActivating); err != nil {
			s.undoProfile(ctx, op)
			s.finishWith(op, agentv1.Outcome_OUTCOME_FAILED, err.Error()+"; nothing was activated", false)
			return
		}
		// The new system's services read their secrets as they start: the set
		// must be current before activation (and is restored by any rollback).
		if err := s.installSecrets(op); err != nil {
			s.restoreSecrets(op)
			s.undoProfile(ctx, op)
			s.finishWith(op, agentv1.Outcome_OUTCOME_FAILED, "secrets: "+err.Error()+"; nothing was activated", false)
			return
		}
		if err := x.Activate(ctx, out, actionWord(action), act, op.logLine); err != nil {
			s.rollBackAndFinish(ctx, op, agentv1.Outcome_OUTCOME_FAILED, fmt.Sprintf("activation failed: %v", err), action != agentv1.Action_ACTION_DRY_ACTIVATE)
			return
		}
		s.crashPoint("activated")
		if !s.afterActivation(ctx, op) {
			return
		}
	}
	s.settle(ctx, op)
}

// activates says whether an action activates a system, and so installs secrets.
func activates(a agentv1.Action) bool {
	return a == agentv1.Action_ACTION_SWITCH || a == agentv1.Action_ACTION_BOOT || a == agentv1.Action_ACTION_TEST
}

// afterActivation finishes what an activation enables: the secrets whose owner the
// new system created get it, then the health checks run (health.go). When either
// fails the operation rolls back (its services could not read their secrets, or
// the system is unhealthy) and afterActivation returns false.
func (s *Server) afterActivation(ctx context.Context, op *operation) bool {
	if err := s.chownDeferred(op); err != nil {
		s.rollBackAndFinish(ctx, op, agentv1.Outcome_OUTCOME_FAILED, "secrets: "+err.Error(), true)
		return false
	}
	return s.checkHealth(ctx, op)
}

// timedOut ends an operation whose deadline ran out before anything was activated:
// the profile goes back if it moved, and the result is FAILED with timed_out.
func (s *Server) timedOut(ctx context.Context, op *operation, during string) {
	if op.jr.Step == stepSettingProfile {
		s.undoProfile(ctx, op) // nix-env --set may have moved it before it was stopped
	}
	msg := fmt.Sprintf("timed out after %s (operation_timeout) %s; nothing was activated, the previous system is still active",
		op.header.GetOperationTimeout().AsDuration(), during)
	s.log.Warn("operation timed out", "operation", op.id, "deadline", op.deadline.UTC().Format(time.RFC3339), "during", during)
	x := s.cfg.Executor
	gen, err := x.Generation()
	if err != nil {
		op.agentLine("read generation: " + err.Error())
	}
	current, err := x.CurrentSystem()
	if err != nil {
		op.agentLine("read current system: " + err.Error())
	}
	s.finishOp(op, &agentv1.ApplyResult{Outcome: agentv1.Outcome_OUTCOME_FAILED, Message: msg, Generation: gen,
		StorePath: op.jr.StorePath, CurrentSystem: current, TimedOut: true})
	s.log.Info("operation done", "operation", op.id, "outcome", agentv1.Outcome_OUTCOME_FAILED.String(), "timed_out", true, "generation", gen, "current_system", current)
}

func (s *Server) recoverPanic(op *operation) {
	// A bug must not leave the agent busy forever with an operation that never ends.
	if r := recover(); r != nil {
		s.log.Error("operation panicked", "operation", op.id, "panic", fmt.Sprint(r))
		s.fail(op, fmt.Sprintf("internal error: %v", r))
	}
}

// confirmTimeout is how long the operation waits for Confirm after activating; 0
// when it does not.
func confirmTimeout(h *agentv1.ApplyHeader) time.Duration {
	if a := h.GetAction(); a != agentv1.Action_ACTION_SWITCH && a != agentv1.Action_ACTION_TEST {
		return 0
	}
	return max(h.GetConfirmTimeout().AsDuration(), 0)
}

// settle ends an operation whose activation (if any) succeeded: at once, or after
// the confirm window — a rollback when no Confirm came.
func (s *Server) settle(ctx context.Context, op *operation) {
	if timeout := confirmTimeout(op.header); timeout > 0 {
		deadline := time.Now().Add(timeout)
		d := deadline.UTC()
		op.jr.ConfirmDeadline = &d
		if err := s.step(op, stepAwaitingConfirm); err != nil {
			// Recovery from "activating" ends the same way: a successful activation
			// opens a confirm window. So this is not worth a rollback.
			s.log.Warn("cannot journal the confirm window", "operation", op.id, "err", err)
		}
		op.openConfirmWindow()
		op.emit(&agentv1.ApplyResponse{Event: &agentv1.ApplyResponse_Phase{Phase: &agentv1.PhaseEvent{
			Phase: agentv1.Phase_PHASE_AWAITING_CONFIRM, Detail: "waiting " + timeout.String() + " for Confirm", Deadline: timestamppb.New(deadline),
		}}})
		s.log.Info("awaiting confirm", "operation", op.id, "deadline", deadline.UTC().Format(time.RFC3339), "incarnation", op.jr.Incarnation)
		s.crashPoint("confirm-window")
		if !op.waitConfirm(deadline) {
			s.rollBackAndFinish(ctx, op, agentv1.Outcome_OUTCOME_ROLLED_BACK, "no Confirm within "+timeout.String()+"; the previous system was re-activated", true)
			return
		}
		op.agentLine("confirmed")
	}
	s.finishWith(op, agentv1.Outcome_OUTCOME_SUCCEEDED, "", false)
}

// rollBackAndFinish journals why it rolls back and how the operation ends, so a
// restarted agent can finish the same way, then rolls back and finishes.
func (s *Server) rollBackAndFinish(ctx context.Context, op *operation, outcome agentv1.Outcome, msg string, rolledBack bool) {
	op.jr.Rollback = &rollback{Outcome: outcome.String(), Message: msg, RolledBack: rolledBack}
	if err := s.step(op, stepRollingBack); err != nil {
		s.log.Warn("cannot journal the rollback", "operation", op.id, "err", err)
	}
	s.rollBack(ctx, op)
	s.finishWith(op, outcome, msg, rolledBack)
}

// rollBack returns to the system that ran before the operation: for switch and boot
// the profile goes back to the previous generation; for switch and test the previous
// system is activated again. Failures are logged into the operation, and the result
// reports the system actually active afterwards.
func (s *Server) rollBack(ctx context.Context, op *operation) {
	x := s.cfg.Executor
	prevGen, prevSystem := op.jr.PreviousGeneration, op.jr.PreviousSystem
	action := op.header.GetAction()
	if action == agentv1.Action_ACTION_DRY_ACTIVATE {
		return // changed nothing
	}
	op.phase(agentv1.Phase_PHASE_ROLLING_BACK, prevSystem)
	s.log.Warn("rolling back", "operation", op.id, "to_generation", prevGen, "to_system", prevSystem)
	// Before the previous system is activated again, so its services start with
	// the secrets they ran with.
	s.restoreSecrets(op)
	if action == agentv1.Action_ACTION_SWITCH || action == agentv1.Action_ACTION_BOOT {
		if prevGen > 0 {
			if err := x.SwitchGeneration(ctx, prevGen, op.logLine); err != nil {
				op.agentLine("rollback of the system profile failed: " + err.Error())
			}
		} else {
			op.agentLine("no previous generation of the system profile to return to")
		}
	}
	if action == agentv1.Action_ACTION_SWITCH || action == agentv1.Action_ACTION_TEST {
		if prevSystem == "" {
			op.agentLine("no previously running system known; nothing to re-activate")
			return
		}
		act := s.newActivation(op)
		op.jr.Unit = act.Unit
		if err := s.step(op, stepRollingBack); err != nil {
			s.log.Warn("cannot journal the rollback's activation", "operation", op.id, "err", err)
		}
		if err := x.Activate(ctx, prevSystem, actionWord(action), act, op.logLine); err != nil {
			op.agentLine("re-activating the previous system failed: " + err.Error())
		}
	}
}

// undoProfile returns the system profile to the generation before the operation,
// when the operation moved it but activated nothing.
func (s *Server) undoProfile(ctx context.Context, op *operation) {
	if a := op.header.GetAction(); a != agentv1.Action_ACTION_SWITCH && a != agentv1.Action_ACTION_BOOT {
		return
	}
	x := s.cfg.Executor
	prev := op.jr.PreviousGeneration
	gen, err := x.Generation()
	if err != nil {
		op.agentLine("read generation: " + err.Error())
		return
	}
	if gen == prev {
		return
	}
	op.phase(agentv1.Phase_PHASE_ROLLING_BACK, fmt.Sprintf("system profile back to generation %d", prev))
	if prev <= 0 {
		op.agentLine("no previous generation of the system profile to return to")
		return
	}
	if err := x.SwitchGeneration(ctx, prev, op.logLine); err != nil {
		op.agentLine("rollback of the system profile failed: " + err.Error())
	}
}

func (s *Server) finishWith(op *operation, outcome agentv1.Outcome, msg string, rolledBack bool) {
	x := s.cfg.Executor
	gen, err := x.Generation()
	if err != nil {
		op.agentLine("read generation: " + err.Error())
	}
	current, err := x.CurrentSystem()
	if err != nil {
		op.agentLine("read current system: " + err.Error())
	}
	r := &agentv1.ApplyResult{
		Outcome: outcome, Message: msg, Generation: gen, StorePath: op.jr.StorePath,
		RolledBack: rolledBack, CurrentSystem: current, Health: journaledHealth(op.jr),
	}
	if outcome == agentv1.Outcome_OUTCOME_SUCCEEDED && op.jr.Secrets != nil {
		r.SecretsDigest = op.header.GetSecrets().GetDigest()
	}
	s.finishOp(op, r)
	s.log.Info("operation done", "operation", op.id, "outcome", outcome.String(), "generation", gen, "store_path", op.jr.StorePath, "current_system", current)
}

// finishOp journals the result, then records and emits it.
func (s *Server) finishOp(op *operation, r *agentv1.ApplyResult) {
	j := op.jr
	if j == nil { // failed before its first step (receiving the source)
		j = newJournal(op.header, op.snapshot().GetStartedTime().AsTime(), op.deadline)
		op.jr = j
	}
	j.Step = stepFinished
	j.Result, _ = protojson.Marshal(r)
	now := time.Now().UTC()
	j.FinishedTime = &now
	if err := s.writeJournal(j); err != nil {
		s.log.Warn("cannot record the end of the operation in the journal", "operation", op.id, "err", err)
	}
	s.pruneSecrets() // the set that is not current: the new one after a failure, else the old
	op.finish(r, s.writeRecord)
}

// actionWord is the switch-to-configuration argument for an action.
func actionWord(a agentv1.Action) string {
	switch a {
	case agentv1.Action_ACTION_SWITCH:
		return "switch"
	case agentv1.Action_ACTION_BOOT:
		return "boot"
	case agentv1.Action_ACTION_TEST:
		return "test"
	case agentv1.Action_ACTION_DRY_ACTIVATE:
		return "dry-activate"
	}
	return ""
}
