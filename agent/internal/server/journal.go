package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/homystack/nio/agent/internal/health"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// The operation journal, <state-dir>/journal.json, is what lets an agent that was
// killed mid-operation finish it consistently after systemd restarts it (see
// recover.go). It describes the latest operation only; each step is written
// (atomically, fsync'd) *before* the step changes the host, so the journal never
// claims less than happened:
//
//	building          work started; nothing on the host changed yet
//	setting-profile   nix-env --set is about to run (switch, boot)
//	activating        the activation `unit` is about to start
//	health-checking   activated; the health checks run until health_deadline
//	awaiting-confirm  activated; the confirm window is open until confirm_deadline
//	rolling-back      rolling back (rollback.outcome says why); `unit` is the
//	                  rollback's activation once it starts
//	finished          over; `result` is the ApplyResult
//
// An operation "past the commit point" is one whose journal is at setting-profile or
// later and not finished: the host may run, or boot into, something the operation
// has not yet confirmed.
const (
	stepBuilding        = "building"
	stepSettingProfile  = "setting-profile"
	stepActivating      = "activating"
	stepHealthChecking  = "health-checking"
	stepAwaitingConfirm = "awaiting-confirm"
	stepRollingBack     = "rolling-back"
	stepFinished        = "finished"
)

const journalVersion = 1

// journal is the on-disk record of one operation. Field names are the file's keys;
// a test on a real host may read them (jq .step /var/lib/nio-agent/journal.json).
type journal struct {
	Version     int    `json:"version"`
	OperationID string `json:"operation_id"`
	// Header is the operation's ApplyHeader in protojson.
	Header json.RawMessage `json:"header"`
	Step   string          `json:"step"`
	// Incarnation counts the agent restarts this operation went through; a
	// recovered operation's event sequences start at Incarnation<<32 + 1.
	Incarnation uint32    `json:"incarnation"`
	StartedTime time.Time `json:"started_time"`
	UpdatedTime time.Time `json:"updated_time"`
	// Action is the switch-to-configuration argument; ConfirmTimeout the header's,
	// as a Go duration ("" without one). Both repeat the header, for people.
	Action         string `json:"action"`
	ConfirmTimeout string `json:"confirm_timeout,omitempty"`
	// Deadline is when the operation's operation_timeout runs out, absolute, so a
	// restart neither extends nor restarts it.
	Deadline *time.Time `json:"deadline,omitempty"`

	// From setting-profile on: what to return to, and what was built.
	PreviousGeneration int64  `json:"previous_generation"`
	PreviousSystem     string `json:"previous_system"`
	StorePath          string `json:"store_path,omitempty"`
	// Unit is the transient unit of the current activation (the new system's from
	// activating on, the previous system's once a rollback activates it); its
	// files are in the operation's work dir (nixos.Activation).
	Unit string `json:"unit,omitempty"`
	// From setting-profile (or activating, for test) on, when a health check
	// looks for new failures: the units failed before the activation.
	HealthBaseline health.FailedUnits `json:"health_baseline,omitempty"`
	// From health-checking on: when the checks' timeout, counted from the end of
	// the activation, runs out (absolute: a restart does not extend it); and,
	// once they ran, their report (agentv1.HealthReport in protojson).
	HealthDeadline  *time.Time      `json:"health_deadline,omitempty"`
	HealthReport    json.RawMessage `json:"health_report,omitempty"`
	ConfirmDeadline *time.Time      `json:"confirm_deadline,omitempty"`
	Rollback        *rollback       `json:"rollback,omitempty"`
	// Secrets names the operation's secrets set and the one it replaces (never
	// their contents; secrets.go), from the first step after they were written.
	Secrets *journalSecrets `json:"secrets,omitempty"`

	// At finished: the result, in protojson, and when.
	Result       json.RawMessage `json:"result,omitempty"`
	FinishedTime *time.Time      `json:"finished_time,omitempty"`
}

// rollback is why a rollback runs and how the operation ends after it.
type rollback struct {
	Outcome    string `json:"outcome"` // agentv1.Outcome name
	Message    string `json:"message"`
	RolledBack bool   `json:"rolled_back"`
}

func (s *Server) journalPath() string { return filepath.Join(s.cfg.StateDir, "journal.json") }

func newJournal(h *agentv1.ApplyHeader, started, deadline time.Time) *journal {
	hdr, _ := protojson.Marshal(h) // a valid message always marshals
	j := &journal{
		Version: journalVersion, OperationID: h.GetOperationId(), Header: hdr, Step: stepBuilding,
		StartedTime: started.UTC(), Action: actionWord(h.GetAction()),
	}
	if d := h.GetConfirmTimeout().AsDuration(); d > 0 {
		j.ConfirmTimeout = d.String()
	}
	if !deadline.IsZero() {
		d := deadline.UTC()
		j.Deadline = &d
	}
	return j
}

// writeJournal persists j durably: a crash leaves either the old or the new file.
func (s *Server) writeJournal(j *journal) error {
	j.UpdatedTime = time.Now().UTC()
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := writeFileSync(s.journalPath(), append(data, '\n')); err != nil {
		return fmt.Errorf("write operation journal: %w", err)
	}
	return nil
}

// readJournal returns the journal, nil when there is none, or an error when it
// cannot be understood.
func (s *Server) readJournal() (*journal, *agentv1.ApplyHeader, error) {
	data, err := os.ReadFile(s.journalPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	j := &journal{}
	if err := json.Unmarshal(data, j); err != nil {
		return nil, nil, err
	}
	if j.Version != journalVersion {
		return nil, nil, fmt.Errorf("version %d, this agent knows %d", j.Version, journalVersion)
	}
	h := &agentv1.ApplyHeader{}
	if err := protojson.Unmarshal(j.Header, h); err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	if err := validateHeader(h); err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	if h.GetOperationId() != j.OperationID {
		return nil, nil, fmt.Errorf("header names operation %q, journal %q", h.GetOperationId(), j.OperationID)
	}
	if len(j.HealthReport) > 0 {
		if err := protojson.Unmarshal(j.HealthReport, &agentv1.HealthReport{}); err != nil {
			return nil, nil, fmt.Errorf("health report: %w", err)
		}
	}
	switch j.Step {
	case stepBuilding, stepSettingProfile, stepAwaitingConfirm:
	case stepActivating:
		if j.Unit == "" {
			return nil, nil, errors.New("step activating without a unit")
		}
	case stepHealthChecking:
		if j.HealthDeadline == nil || h.GetHealthChecks() == nil {
			return nil, nil, errors.New("step health-checking without health checks or their deadline")
		}
	case stepRollingBack:
		if j.Rollback == nil || agentv1.Outcome_value[j.Rollback.Outcome] == 0 {
			return nil, nil, errors.New("step rolling-back without a valid rollback outcome")
		}
	case stepFinished:
		if err := protojson.Unmarshal(j.Result, &agentv1.ApplyResult{}); err != nil {
			return nil, nil, fmt.Errorf("result: %w", err)
		}
	default:
		return nil, nil, fmt.Errorf("unknown step %q", j.Step)
	}
	return j, h, nil
}

// writeFileSync writes path atomically and durably: a temporary file in the same
// directory, fsync'd, renamed over path, and the directory fsync'd.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}
