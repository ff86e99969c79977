package server

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// peekExecutor records what the secrets directory held when each activation began.
type peekExecutor struct {
	*fakeExecutor
	dir  string
	mu   sync.Mutex
	seen []string // "<action> <content of current/db/password or '-'>"
}

func (p *peekExecutor) Activate(ctx context.Context, path, action string, a nixos.Activation, log nixos.LineFunc) error {
	got, err := os.ReadFile(filepath.Join(p.dir, "current", "db", "password"))
	if err != nil {
		got = []byte("-")
	}
	p.mu.Lock()
	p.seen = append(p.seen, action+" "+string(got))
	p.mu.Unlock()
	return p.fakeExecutor.Activate(ctx, path, action, a, log)
}

type secretsHost struct {
	x       *peekExecutor
	state   string
	secrets string
	client  agentv1.AgentServiceClient
}

func startSecretsHost(t *testing.T) *secretsHost {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	x := &peekExecutor{fakeExecutor: newFakeExecutor(), dir: state + "-secrets"}
	return &secretsHost{x: x, state: state, secrets: state + "-secrets", client: startBufconn(t, newTestServer(t, x, state))}
}

func password(v string) []*agentv1.SecretFile {
	return []*agentv1.SecretFile{
		{Path: "db/password", Data: []byte(v)},
		{Path: "tls/key.pem", Data: []byte("key-" + v), Mode: 0o440, Owner: "65534", Group: "65534"},
	}
}

func (h *secretsHost) read(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.secrets, "current", filepath.FromSlash(rel)))
	if err != nil {
		return "-"
	}
	return string(b)
}

// sets lists sets/ and anything else beside current: what must never pile up.
func (h *secretsHost) sets(t *testing.T) []string {
	t.Helper()
	var names []string
	top, _ := os.ReadDir(h.secrets)
	for _, e := range top {
		if e.Name() != "sets" && e.Name() != "current" {
			names = append(names, e.Name())
		}
	}
	sets, _ := os.ReadDir(filepath.Join(h.secrets, "sets"))
	for _, e := range sets {
		names = append(names, "sets/"+e.Name())
	}
	return names
}

// grepTree fails when any file below root holds needle.
func grepTree(t *testing.T, root string, needle []byte) {
	t.Helper()
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, _ := os.ReadFile(p); bytes.Contains(b, needle) {
			t.Errorf("%s holds a secret", p)
		}
		return nil
	})
}

func TestSecretsAreInstalledBeforeActivationWithTheirModesAndNeverInTheStateDir(t *testing.T) {
	h := startSecretsHost(t)
	arch := makeArchive(t, sourceV1)
	value := "pw-3c0ffee-agent"
	run := applyWithSecrets(t, h.client, flakeHeader("op-s1", agentv1.Action_ACTION_SWITCH, arch), password(value), arch, nil)
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_SUCCEEDED)
	if r.GetSecretsDigest() != "test-digest-op-s1" {
		t.Errorf("secrets_digest %q, want the manifest's", r.GetSecretsDigest())
	}
	if got := h.x.seen; len(got) != 1 || got[0] != "switch "+value {
		t.Errorf("at activation the secrets dir held %q", got)
	}
	for rel, want := range map[string]struct {
		mode     os.FileMode
		uid, gid uint32
	}{"db/password": {0o400, 0, 0}, "tls/key.pem": {0o440, 65534, 65534}} {
		fi, err := os.Stat(filepath.Join(h.secrets, "current", rel))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != want.mode || st.Uid != want.uid || st.Gid != want.gid {
			t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid, want.mode, want.uid, want.gid)
		}
	}
	// A secret for another user: its set is traversable, not listable.
	set, _ := os.Readlink(filepath.Join(h.secrets, "current"))
	if fi, err := os.Stat(filepath.Join(h.secrets, set)); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("set dir %s: %v %v, want 0711", set, fi.Mode(), err)
	}
	grepTree(t, h.state, []byte(value))
	if j, _ := os.ReadFile(filepath.Join(h.state, "journal.json")); !bytes.Contains(j, []byte(`"set": "op-`)) {
		t.Errorf("the journal does not name the set:\n%s", j)
	}

	// Root-only secrets: the set is 0700. The earlier set is gone once this one is
	// current.
	run = applyWithSecrets(t, h.client, flakeHeader("op-s2", agentv1.Action_ACTION_SWITCH, arch), []*agentv1.SecretFile{{Path: "db/password", Data: []byte("v2")}}, nil, nil)
	wantOutcome(t, run, agentv1.Outcome_OUTCOME_SUCCEEDED)
	set, _ = os.Readlink(filepath.Join(h.secrets, "current"))
	if fi, err := os.Stat(filepath.Join(h.secrets, set)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("root-only set dir %s: %v %v, want 0700", set, fi.Mode(), err)
	}
	if h.read(t, "db/password") != "v2" || h.read(t, "tls/key.pem") != "-" {
		t.Errorf("current holds %q and %q, want only the new set", h.read(t, "db/password"), h.read(t, "tls/key.pem"))
	}
	if got := h.sets(t); len(got) != 1 || got[0] != "sets/"+filepath.Base(set) {
		t.Errorf("left in the secrets dir: %q", got)
	}

	// An empty manifest removes them; no manifest (an older operator) leaves them.
	keep := flakeHeader("op-s3", agentv1.Action_ACTION_SWITCH, arch)
	wantOutcome(t, apply(t, h.client, keep, nil, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if h.read(t, "db/password") != "v2" {
		t.Error("an operation without a manifest changed the secrets")
	}
	clear := flakeHeader("op-s4", agentv1.Action_ACTION_SWITCH, arch)
	clear.Secrets = &agentv1.SecretsManifest{Digest: ""}
	wantOutcome(t, applyWithSecrets(t, h.client, clear, nil, nil, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if _, err := os.Lstat(filepath.Join(h.secrets, "current")); !os.IsNotExist(err) || len(h.sets(t)) != 0 {
		t.Errorf("after an empty set: current %v, left %q", err, h.sets(t))
	}
}

func TestRollbackRestoresThePreviousSecrets(t *testing.T) {
	h := startSecretsHost(t)
	arch := makeArchive(t, sourceV1)
	wantOutcome(t, applyWithSecrets(t, h.client, flakeHeader("op-old", agentv1.Action_ACTION_SWITCH, arch), password("old"), arch, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)

	v2 := makeArchive(t, entry{name: "flake.nix", body: "# v2"})
	run := applyWithSecrets(t, h.client, withConfirm(flakeHeader("op-new", agentv1.Action_ACTION_SWITCH, v2), 200*time.Millisecond), password("new"), v2, nil)
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_ROLLED_BACK)
	if r.GetSecretsDigest() != "" {
		t.Errorf("a rolled-back operation reports secrets %q installed", r.GetSecretsDigest())
	}
	// The new system started with the new secrets, the previous one again with the old.
	if got := strings.Join(h.x.seen, "|"); got != "switch old|switch new|switch old" {
		t.Errorf("activations saw %q", got)
	}
	if h.read(t, "db/password") != "old" || h.read(t, "tls/key.pem") != "key-old" || len(h.sets(t)) != 1 {
		t.Errorf("after the rollback: %q %q, left %q", h.read(t, "db/password"), h.read(t, "tls/key.pem"), h.sets(t))
	}

	// A failed build changes nothing, and leaves no set behind.
	x := h.x.fakeExecutor
	x.mu.Lock()
	x.failBuild = true
	x.mu.Unlock()
	v3 := makeArchive(t, entry{name: "flake.nix", body: "# v3"})
	wantOutcome(t, applyWithSecrets(t, h.client, flakeHeader("op-broken", agentv1.Action_ACTION_SWITCH, v3), password("broken"), v3, nil), agentv1.Outcome_OUTCOME_FAILED)
	if h.read(t, "db/password") != "old" || len(h.sets(t)) != 1 {
		t.Errorf("after a failed build: %q, left %q", h.read(t, "db/password"), h.sets(t))
	}
}

func TestUnknownSecretOwnerRollsBackAfterActivation(t *testing.T) {
	h := startSecretsHost(t)
	arch := makeArchive(t, sourceV1)
	wantOutcome(t, applyWithSecrets(t, h.client, flakeHeader("op-old", agentv1.Action_ACTION_SWITCH, arch), password("old"), arch, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	files := []*agentv1.SecretFile{{Path: "db/password", Data: []byte("pw-unknown-owner-77"), Owner: "nio-no-such-user"}}
	v2 := makeArchive(t, entry{name: "flake.nix", body: "# v2"})
	r := wantOutcome(t, applyWithSecrets(t, h.client, flakeHeader("op-owner", agentv1.Action_ACTION_SWITCH, v2), files, v2, nil), agentv1.Outcome_OUTCOME_FAILED)
	if !r.GetRolledBack() || !strings.Contains(r.GetMessage(), `owner "nio-no-such-user"`) || strings.Contains(r.GetMessage(), "pw-unknown") {
		t.Errorf("result %v", r)
	}
	if h.read(t, "db/password") != "old" {
		t.Errorf("after the rollback current holds %q", h.read(t, "db/password"))
	}
}

func TestRefusedOrBrokenSecretsLeaveNothingOnTheHost(t *testing.T) {
	h := startSecretsHost(t)
	arch := makeArchive(t, sourceV1)
	big := bytes.Repeat([]byte("B"), maxSecretBytes+1)
	for name, files := range map[string][]*agentv1.SecretFile{
		"too large": {{Path: "a", Data: big}},
		"traversal": {{Path: "../../etc/shadow", Data: []byte("x")}},
		"nested":    {{Path: "a", Data: []byte("x")}, {Path: "a/b", Data: []byte("y")}},
		"mode":      {{Path: "a", Data: []byte("x"), Mode: 0o4755}},
	} {
		run := applyWithSecrets(t, h.client, flakeHeader("op-"+strings.ReplaceAll(name, " ", "-"), agentv1.Action_ACTION_SWITCH, arch), files, arch, nil)
		if status.Code(run.streamed) != codes.InvalidArgument || strings.Contains(run.streamed.Error(), "BBBB") {
			t.Errorf("%s: %v, want InvalidArgument naming no content", name, run.streamed)
		}
	}
	// The client announces two secrets and goes away after one.
	ctx, cancel := context.WithCancel(context.Background())
	st, err := h.client.Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hdr := flakeHeader("op-cut", agentv1.Action_ACTION_SWITCH, arch)
	hdr.Secrets = &agentv1.SecretsManifest{Count: 2, Digest: "d"}
	_ = st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Header{Header: hdr}})
	_ = st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Secret{Secret: &agentv1.SecretFile{Path: "a", Data: []byte("half")}}})
	_ = st.CloseSend()
	if _, err := st.Recv(); err == nil {
		t.Error("a cut-off transfer of secrets was answered with an event")
	}
	cancel()
	if _, err := os.Stat(h.secrets); !os.IsNotExist(err) {
		t.Errorf("the secrets dir exists after refused transfers: %v, %q", err, h.sets(t))
	}
	if calls := h.x.Calls(); len(calls) != 0 {
		t.Errorf("the executor ran %q", calls)
	}
	// Nothing was registered: the same id starts afresh.
	r := wantOutcome(t, applyWithSecrets(t, h.client, hdr, password("whole"), arch, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if r.GetSecretsDigest() != "d" || h.read(t, "db/password") != "whole" {
		t.Errorf("retry: %v, current %q", r, h.read(t, "db/password"))
	}
}

func TestAttachDropsTheResentSecretsAndSecretsSurviveARestart(t *testing.T) {
	h := startSecretsHost(t)
	arch := makeArchive(t, sourceV1)
	hdr := flakeHeader("op-a", agentv1.Action_ACTION_SWITCH, arch)
	first := applyWithSecrets(t, h.client, hdr, password("one"), arch, nil)
	wantOutcome(t, first, agentv1.Outcome_OUTCOME_SUCCEEDED)
	// The operator re-sends the header and its secrets (other bytes, to tell them
	// apart) after a lost stream: it attaches, nothing is rewritten.
	hdr.ResumeAfterSequence = first.events[len(first.events)-1].GetSequence() - 1
	again := applyWithSecrets(t, h.client, hdr, password("two"), nil, nil)
	if again.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED || len(again.events) != 1 {
		t.Fatalf("attach: %v, %d events", again.result, len(again.events))
	}
	if h.read(t, "db/password") != "one" {
		t.Errorf("an attach rewrote the secrets: %q", h.read(t, "db/password"))
	}
	restarted := startBufconn(t, newTestServer(t, h.x, h.state))
	if _, err := restarted.Status(context.Background(), &agentv1.StatusRequest{}); err != nil || h.read(t, "db/password") != "one" {
		t.Errorf("after an agent restart: %v, %q", err, h.read(t, "db/password"))
	}
}

func TestAgentKilledInTheConfirmWindowRestoresThePreviousSecretsOnRecovery(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	dir := state + "-secrets"
	read := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "current", "db", "password"))
		if err != nil {
			return "-"
		}
		return string(b)
	}
	x := newFakeExecutor()
	first := startAgentProcess(t, x, state, "")
	v1 := makeArchive(t, sourceV1)
	wantOutcome(t, applyWithSecrets(t, first.client, flakeHeader("op-v1", agentv1.Action_ACTION_SWITCH, v1), password("old"), v1, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	first.kill()

	second := startAgentProcess(t, x, state, "confirm-window")
	v2 := makeArchive(t, sourceV2)
	h := withConfirm(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2), 300*time.Millisecond)
	cut := make(chan *applyRun, 1)
	go func() { cut <- applyWithSecrets(t, second.client, h, password("new"), v2, nil) }()
	<-second.crashed
	if read() != "new" {
		t.Fatalf("in the confirm window current holds %q, want the new set", read())
	}
	second.kill()
	<-cut

	// The restarted agent has no secrets in memory: the journal names the sets,
	// which the secrets dir (tmpfs, kept across agent restarts) still holds.
	third := startAgentProcess(t, x, state, "")
	// The operator re-sends the header with its secrets (the agent drops them).
	h.ResumeAfterSequence = 0
	r := applyWithSecrets(t, third.client, h, password("new"), nil, nil)
	wantOutcome(t, r, agentv1.Outcome_OUTCOME_ROLLED_BACK)
	if read() != "old" {
		t.Errorf("after the recovered rollback current holds %q, want the previous set", read())
	}
	if sets, _ := os.ReadDir(filepath.Join(dir, "sets")); len(sets) != 1 {
		t.Errorf("sets left: %v", sets)
	}
}

func TestAgentWithoutSecretsDirTakesAnEmptySetAndRefusesSecrets(t *testing.T) {
	x := newFakeExecutor()
	s, err := New(Config{Executor: x, StateDir: t.TempDir(), MaxSourceBytes: 1 << 20, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	c := startBufconn(t, s)
	arch := makeArchive(t, sourceV1)
	empty := flakeHeader("op-empty", agentv1.Action_ACTION_SWITCH, arch)
	empty.Secrets = &agentv1.SecretsManifest{}
	wantOutcome(t, applyWithSecrets(t, c, empty, nil, arch, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	run := applyWithSecrets(t, c, flakeHeader("op-some", agentv1.Action_ACTION_SWITCH, arch), password("x"), nil, nil)
	if status.Code(run.streamed) != codes.FailedPrecondition {
		t.Errorf("secrets without --secrets-dir: %v", run.streamed)
	}
}
