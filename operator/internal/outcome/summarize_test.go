package outcome

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	nio "github.com/homystack/nio/api/v1alpha1"
)

func summary() (Summary, *nio.NixosConfiguration, *events.FakeRecorder) {
	obj := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", Generation: 3}}
	rec := events.NewFakeRecorder(10)
	return Summary{Object: obj, Conditions: &obj.Status.Conditions, Recorder: rec}, obj, rec
}

func drain(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// TestSummarizeKinds pins what each kind of outcome makes of the conditions, the
// event and the requeue decision.
func TestSummarizeKinds(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name                 string
		err                  error
		ready                metav1.ConditionStatus
		reason               string
		reconciling, stalled bool
		result               time.Duration
		returnsErr           bool
		events               int
	}{
		{name: "success", ready: metav1.ConditionTrue, reason: "Succeeded", result: time.Minute},
		{name: "stalling", err: Stalled("MachineNotFound", "Machine %s not found", "m"), ready: metav1.ConditionFalse, reason: "MachineNotFound", stalled: true, events: 1},
		{name: "config error", err: AsConfigError(fmt.Errorf("bad key: %w", boom)), ready: metav1.ConditionFalse, reason: ReasonInvalidConfiguration, stalled: true, events: 1},
		{name: "wrapped stalling", err: fmt.Errorf("additional file x: %w", Stalled("InvalidConfiguration", "no key")), ready: metav1.ConditionFalse, reason: "InvalidConfiguration", stalled: true, events: 1},
		{name: "waiting", err: Wait(5*time.Second, "Progressing", "Waiting for Machine m"), ready: metav1.ConditionUnknown, reason: "Progressing", reconciling: true, result: 5 * time.Second},
		{name: "generic", err: Failed("HostUnreachable", boom), ready: metav1.ConditionFalse, reason: "HostUnreachable", returnsErr: true},
		{name: "generic with its own backoff and event", err: &Generic{Reason: "ApplyFailed", Err: boom, RequeueAfter: 4 * time.Second, Action: "Apply", Note: "boom\nlast output:\nx"},
			ready: metav1.ConditionFalse, reason: "ApplyFailed", result: 4 * time.Second, events: 1},
		{name: "unclassified", err: boom, ready: metav1.ConditionFalse, reason: ReasonFailed, returnsErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, obj, rec := summary()
			// A previous pass left every condition there.
			meta.SetStatusCondition(&obj.Status.Conditions, metav1.Condition{Type: nio.ConditionReconciling, Status: metav1.ConditionTrue, Reason: "x"})
			meta.SetStatusCondition(&obj.Status.Conditions, metav1.Condition{Type: nio.ConditionStalled, Status: metav1.ConditionTrue, Reason: "x"})
			res, err := s.Summarize(context.Background(), Success{Reason: "Succeeded", Message: "Applied", RequeueAfter: time.Minute}, tc.err)
			if (err != nil) != tc.returnsErr || res.RequeueAfter != tc.result {
				t.Errorf("Summarize = %+v, %v; want requeue after %v, error returned %v", res, err, tc.result, tc.returnsErr)
			}
			ready := meta.FindStatusCondition(obj.Status.Conditions, nio.ConditionReady)
			if ready == nil || ready.Status != tc.ready || ready.Reason != tc.reason || ready.ObservedGeneration != 3 {
				t.Errorf("Ready = %+v, want %s/%s at generation 3", ready, tc.ready, tc.reason)
			}
			if got := meta.FindStatusCondition(obj.Status.Conditions, nio.ConditionReconciling) != nil; got != tc.reconciling {
				t.Errorf("Reconciling present = %v, want %v", got, tc.reconciling)
			}
			if got := meta.FindStatusCondition(obj.Status.Conditions, nio.ConditionStalled) != nil; got != tc.stalled {
				t.Errorf("Stalled present = %v, want %v", got, tc.stalled)
			}
			if ev := drain(rec); len(ev) != tc.events || len(ev) == 1 && !strings.HasPrefix(ev[0], "Warning "+tc.reason) {
				t.Errorf("events = %q, want %d Warning %s", ev, tc.events, tc.reason)
			}
		})
	}
}

// TestStallingEventOncePerChange: a stalled object brought back by unrelated watch
// events does not repeat its Warning event; a new reason does.
func TestStallingEventOncePerChange(t *testing.T) {
	s, _, rec := summary()
	for range 3 {
		s.Summarize(context.Background(), Success{}, Stalled("MachineInUse", "Machine m runs NixosConfiguration other"))
	}
	if ev := drain(rec); len(ev) != 1 {
		t.Fatalf("events = %q, want one", ev)
	}
	s.Summarize(context.Background(), Success{}, Stalled("MachineNotFound", "Machine m not found"))
	if ev := drain(rec); len(ev) != 1 {
		t.Fatalf("events after a new reason = %q, want one", ev)
	}
}

// TestSummarizeTruncatesMessages: condition messages and event notes fit the API
// server's limits.
func TestSummarizeTruncatesMessages(t *testing.T) {
	s, obj, rec := summary()
	long := strings.Repeat("x", 5000)
	s.Summarize(context.Background(), Success{}, &Generic{Reason: "ApplyFailed", Err: errors.New(long), Action: "Apply"})
	if m := meta.FindStatusCondition(obj.Status.Conditions, nio.ConditionReady).Message; len(m) != messageLimit || !strings.HasSuffix(m, "...") {
		t.Errorf("message of %d bytes", len(m))
	}
	if ev := drain(rec); len(ev) != 1 || len(ev[0]) > eventNoteLimit+len("Warning ApplyFailed ") {
		t.Errorf("event of %d bytes", len(ev[0]))
	}
}

// TestOutermostKindWins: a phase that wraps another's error decides its kind (an
// apply that failed because the host could not be opened is ApplyFailed, not the
// opener's stall).
func TestOutermostKindWins(t *testing.T) {
	inner := Stalled("SSHKeyMissing", "Secret k not found")
	if k, reason := Classify(fmt.Errorf("apply: %w", Failed("ApplyFailed", inner))); k != KindGeneric || reason != "ApplyFailed" {
		t.Errorf("Classify = %v %q, want Generic ApplyFailed", k, reason)
	}
	if k, reason := Classify(fmt.Errorf("open: %w", inner)); k != KindStalling || reason != "SSHKeyMissing" {
		t.Errorf("Classify = %v %q, want Stalling SSHKeyMissing", k, reason)
	}
	if k, reason := Classify(AsConfigError(Wait(time.Second, "Busy", "busy"))); k != KindWaiting || reason != "Busy" {
		t.Errorf("Classify = %v %q, want Waiting Busy", k, reason)
	}
}
