package transport

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/facterfixture"
	"github.com/homystack/nio/testkit/sshtest"
	"golang.org/x/crypto/ssh"
)

// finishSource closes the archive writers and returns the archive as a Source.
func finishSource(t testing.TB, buf *bytes.Buffer, tw *tar.Writer, gz *gzip.Writer) Source {
	t.Helper()
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	sum := sha256.Sum256(data)
	return Source{
		Digest: "sha256:" + hex.EncodeToString(sum[:]),
		Size:   int64(len(data)),
		Open:   func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
	}
}

// testSource packs files into a tar.gz Source.
func testSource(t testing.TB, files map[string]string) Source {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[n])); err != nil {
			t.Fatal(err)
		}
	}
	return finishSource(t, &buf, tw, gz)
}

// sshHost is an sshd plus scratch system links the stand-ins update like a switch.
type sshHost struct {
	*sshtest.Server
	profile, current, booted string
	stateDir                 string
	record                   string
}

func startSSHHost(t *testing.T, o sshtest.Options) *sshHost {
	t.Helper()
	s := sshtest.Start(t, o)
	h := &sshHost{
		Server:   s,
		profile:  filepath.Join(s.Dir, "profiles", "system"),
		current:  filepath.Join(s.Dir, "current-system"),
		booted:   filepath.Join(s.Dir, "booted-system"),
		stateDir: filepath.Join(s.Dir, "ssh-src"),
		record:   filepath.Join(s.Dir, "record"),
	}
	for _, d := range []string{"profiles", "store/sys-7", "store/sys-8"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustSymlink(t, filepath.Join(s.Dir, "store/sys-7"), filepath.Join(s.Dir, "profiles", "system-7-link"))
	mustSymlink(t, "system-7-link", h.profile)
	mustSymlink(t, filepath.Join(s.Dir, "store/sys-7"), h.current)
	mustSymlink(t, filepath.Join(s.Dir, "store/sys-7"), h.booted)
	if o.User != "" && os.Geteuid() == 0 {
		// The non-root login user owns the scratch tree, as its home would be.
		if err := filepath.Walk(s.Dir, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, 64123, 65534)
		}); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// nonRootUser is a login user other than root: a made-up one when the tests run as
// root, else the (non-root) current user.
func nonRootUser() string {
	if os.Geteuid() == 0 {
		return "deployer"
	}
	return ""
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// transport is an SSH transport for h; mutate tweaks the config.
func (h *sshHost) transport(t *testing.T, mutate func(*SSHConfig)) *SSH {
	t.Helper()
	cfg := SSHConfig{
		Host:              h.Host,
		Port:              h.Port,
		User:              h.User,
		PrivateKey:        h.ClientKeyPEM,
		HostKey:           h.HostKeyAuthorized(),
		StateDir:          h.stateDir,
		AgentTLSDir:       filepath.Join(h.Dir, "tls"),
		ProfilePath:       h.profile,
		CurrentSystemLink: h.current,
		BootedSystemLink:  h.booted,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	tr, err := NewSSH(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// recordingRebuild is a stand-in nixos-rebuild: it records its argv one argument per
// line, then the unpacked flake.nix it was pointed at, prints to stdout and stderr,
// and switches the scratch links to generation 8 like a real switch.
func (h *sshHost) recordingRebuild(t *testing.T) {
	t.Helper()
	h.WriteStandIn(t, "nixos-rebuild", `#!/bin/sh
rec=`+h.record+`
for a in "$@"; do printf '%s\n' "$a"; done > "$rec"
case "$3" in *'#'*) src="${3%%#*}"; echo "--- flake.nix" >> "$rec"; cat "$src/flake.nix" >> "$rec";; esac
echo "building the system configuration..."
echo "warning: stand-in" >&2
ln -sfn `+h.Dir+`/store/sys-8 `+h.Dir+`/profiles/system-8-link
ln -sfn system-8-link `+h.profile+`
ln -sfn `+h.Dir+`/store/sys-8 `+h.current+`
echo "activated"
`)
}

func collect(events *[]Event) func(Event) {
	return func(ev Event) { *events = append(*events, ev) }
}

func TestSSHApplyRunsNixosRebuildWithExactArgvAndStreamsOutput(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	h.recordingRebuild(t)
	tr := h.transport(t, nil)
	var events []Event
	res, err := tr.Apply(context.Background(), ApplyRequest{
		OperationID: "op-1",
		Action:      ActionSwitch,
		Target:      Target{FlakeDir: "hosts", FlakeAttr: "web"},
		Source:      testSource(t, map[string]string{"hosts/flake.nix": "{ outputs = { self }: {}; }\n"}),
		OnEvent:     collect(&events),
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res.Outcome != OutcomeSucceeded || res.Transport != nio.TransportSSH {
		t.Fatalf("result = %+v", res)
	}
	rec, err := os.ReadFile(h.record)
	if err != nil {
		t.Fatalf("the stand-in nixos-rebuild did not run: %v", err)
	}
	want := "switch\n--flake\n" + h.stateDir + "/op-1/hosts#web\n--- flake.nix\n{ outputs = { self }: {}; }\n"
	if string(rec) != want {
		t.Fatalf("nixos-rebuild recorded\n%s\nwant\n%s", rec, want)
	}
	if res.Generation != 8 || res.StorePath != filepath.Join(h.Dir, "store/sys-8") {
		t.Fatalf("generation %d, store path %q; want 8 and the new system", res.Generation, res.StorePath)
	}
	if res.SourceBytesSent == 0 {
		t.Fatal("no source bytes counted")
	}
	var logs []string
	for _, ev := range events {
		if ev.Kind == EventLog {
			logs = append(logs, ev.Line)
			if ev.Line == "warning: stand-in" && !ev.Stderr {
				t.Fatal("a stderr line was reported as stdout")
			}
		}
	}
	if !slices.Contains(logs, "building the system configuration...") || !slices.Contains(logs, "warning: stand-in") {
		t.Fatalf("streamed lines %q miss the stand-in's output", logs)
	}
	if i, j := slices.Index(logs, "building the system configuration..."), slices.Index(logs, "activated"); i > j {
		t.Fatalf("stdout lines out of order: %q", logs)
	}
	if _, err := os.Stat(filepath.Join(h.stateDir, "op-1")); !os.IsNotExist(err) {
		t.Fatalf("the operation directory was left behind: %v", err)
	}
}

func TestSSHAttrWithShellMetacharactersArrivesAsOneArgument(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	h.recordingRebuild(t)
	canary := filepath.Join(h.Dir, "canary")
	attr := "x; rm -rf /; touch " + canary + " $(touch " + canary + ")"
	res, err := h.transport(t, nil).Apply(context.Background(), ApplyRequest{
		OperationID: "op-2",
		Action:      ActionBoot,
		Target:      Target{FlakeDir: ".", FlakeAttr: attr},
		Source:      testSource(t, map[string]string{"flake.nix": "{}\n"}),
	})
	if err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	rec, err := os.ReadFile(h.record)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.SplitN(string(rec), "\n--- flake.nix\n", 2)[0]
	if want := "boot\n--flake\n" + h.stateDir + "/op-2#" + attr; args != want {
		t.Fatalf("argv arrived as\n%s\nwant\n%s", args, want)
	}
	if _, err := os.Stat(canary); !os.IsNotExist(err) {
		t.Fatal("a part of the attribute was executed by the remote shell")
	}
}

func TestSSHModuleTargetUsesNixosConfigPath(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	h.recordingRebuild(t)
	_, err := h.transport(t, nil).Apply(context.Background(), ApplyRequest{
		OperationID: "op-3",
		Action:      ActionSwitch,
		Target:      Target{ModuleFile: "hosts/minimal.nix"},
		Source:      testSource(t, map[string]string{"hosts/minimal.nix": "{ }\n"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := os.ReadFile(h.record)
	if want := "switch\n--no-flake\n-I\nnixos-config=" + h.stateDir + "/op-3/hosts/minimal.nix\n"; string(rec) != want {
		t.Fatalf("argv arrived as\n%s\nwant\n%s", rec, want)
	}
}

func TestSSHFailedRebuildIsAFailedOutcomeWithLogTail(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	h.WriteStandIn(t, "nixos-rebuild", "#!/bin/sh\necho 'error: attribute missing' >&2\nexit 1\n")
	res, err := h.transport(t, nil).Apply(context.Background(), ApplyRequest{
		OperationID: "op-4", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "nope"},
		Source: testSource(t, map[string]string{"flake.nix": "{}\n"}),
	})
	if err != nil {
		t.Fatalf("a failed build is an outcome, not an error: %v", err)
	}
	if res.Outcome != OutcomeFailed || !slices.Contains(res.LogTail, "error: attribute missing") || res.StorePath != "" {
		t.Fatalf("result = %+v", res)
	}
}

func TestSSHChangedHostKeyIsRefusedWithDistinctError(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	// First contact: nothing known, the key is accepted and its fingerprint reported.
	tofu := h.transport(t, func(c *SSHConfig) { c.HostKey = "" })
	p := tofu.Probe(context.Background())
	if !p.SSHReachable || p.SSHHostKeyFingerprint != h.HostKeyFingerprint() {
		t.Fatalf("probe = %+v, want reachable with %s", p, h.HostKeyFingerprint())
	}
	recorded := h.transport(t, func(c *SSHConfig) { c.HostKey, c.HostKeyFingerprint = "", p.SSHHostKeyFingerprint })
	pinned := h.transport(t, nil)
	if _, err := recorded.Status(context.Background()); err != nil {
		t.Fatalf("recorded fingerprint refused before rotation: %v", err)
	}

	h.RotateHostKey(t)
	for name, tr := range map[string]*SSH{"recorded": recorded, "pinned": pinned} {
		_, err := tr.Status(context.Background())
		if !errors.Is(err, ErrHostKeyMismatch) || errors.Is(err, ErrUnreachable) {
			t.Fatalf("%s: Status after a host key change = %v; want ErrHostKeyMismatch only", name, err)
		}
		var mm *HostKeyMismatchError
		if !errors.As(err, &mm) || mm.Got != h.HostKeyFingerprint() {
			t.Fatalf("%s: mismatch error %v does not name the new key %s", name, err, h.HostKeyFingerprint())
		}
		if p := tr.Probe(context.Background()); p.SSHReachable || !errors.Is(p.SSHError, ErrHostKeyMismatch) {
			t.Fatalf("%s: probe = %+v", name, p)
		}
	}
}

func TestSSHDialFailureIsUnreachable(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	tr := h.transport(t, func(c *SSHConfig) { c.Port = h.Port + 1 })
	if _, err := tr.Status(context.Background()); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Status on a closed port = %v, want ErrUnreachable", err)
	}
}

func TestSSHSudoPasswordIsAClearErrorNotAHang(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{User: nonRootUser()})
	h.recordingRebuild(t)
	// Like sudo -n when the sudoers entry lacks NOPASSWD.
	h.WriteStandIn(t, "sudo", "#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
	// The deadline only guards against a hang; it is far above the expected time.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := h.transport(t, nil).Apply(ctx, ApplyRequest{
		OperationID: "op-5", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "web"},
		Source: testSource(t, map[string]string{"flake.nix": "{}\n"}),
	})
	if !errors.Is(err, ErrSudoPassword) || !strings.Contains(err.Error(), "passwordless sudo") {
		t.Fatalf("Apply = %v, want ErrSudoPassword saying to grant passwordless sudo", err)
	}
	if _, err := os.Stat(h.record); !os.IsNotExist(err) {
		t.Fatal("nixos-rebuild ran although sudo refused")
	}
	if _, err := h.transport(t, nil).Facts(ctx); !errors.Is(err, ErrSudoPassword) {
		t.Fatalf("Facts = %v, want ErrSudoPassword", err)
	}
}

func TestSSHNonRootUserRunsPrivilegedStepsThroughSudo(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{User: nonRootUser()})
	h.recordingRebuild(t)
	sudoLog := filepath.Join(h.Dir, "sudo.log")
	// A passwordless sudo that records how it was called, then runs the command.
	h.WriteStandIn(t, "sudo", `#!/bin/sh
printf '%s|' "$@" >> `+sudoLog+`
echo >> `+sudoLog+`
[ "$1" = -n ] && [ "$2" = -- ] || { echo "sudo: called without -n --" >&2; exit 1; }
shift 2
exec "$@"
`)
	res, err := h.transport(t, nil).Apply(context.Background(), ApplyRequest{
		OperationID: "op-6", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "web"},
		Source: testSource(t, map[string]string{"flake.nix": "{}\n"}),
	})
	if err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	log, err := os.ReadFile(sudoLog)
	if err != nil {
		t.Fatal(err)
	}
	dir := h.stateDir + "/op-6"
	want := "-n|--|sh|-c|" + inDirScript + "|sh|" + dir + "|nixos-rebuild|switch|--flake|" + dir + "#web|"
	if !slices.Contains(strings.Split(string(log), "\n"), want) {
		t.Fatalf("sudo calls:\n%s\nmiss %s", log, want)
	}
}

func TestSSHFactsReturnsTheReport(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	report := facterfixture.Report
	h.WriteStandIn(t, "nixos-facter", "#!/bin/sh\nexec cat "+filepath.Join(h.Dir, "report.json")+"\n")
	if err := os.WriteFile(filepath.Join(h.Dir, "report.json"), report, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := h.transport(t, nil).Facts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.TrimSpace(report)) {
		t.Fatalf("facts differ from the report (%d vs %d bytes)", len(got), len(report))
	}
	h.WriteStandIn(t, "nixos-facter", "#!/bin/sh\necho not json\n")
	if _, err := h.transport(t, nil).Facts(context.Background()); err == nil {
		t.Fatal("a non-JSON report was accepted")
	}
}

func TestSSHStatusReadsSystemLinks(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	st, err := h.transport(t, nil).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sys7 := filepath.Join(h.Dir, "store/sys-7")
	if st.Generation != 7 || st.CurrentSystem != sys7 || st.BootedSystem != sys7 || st.Transport != nio.TransportSSH || st.NeedsReboot {
		t.Fatalf("status = %+v", st)
	}

	// Kernels are links into their own store paths, as on NixOS.
	for _, k := range []string{"store/kernel-a", "store/kernel-b"} {
		if err := os.WriteFile(filepath.Join(h.Dir, k), []byte(k), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustSymlink(t, filepath.Join(h.Dir, "store/kernel-a"), filepath.Join(h.Dir, "store/sys-7/kernel"))
	mustSymlink(t, filepath.Join(h.Dir, "store/kernel-a"), filepath.Join(h.Dir, "store/sys-8/kernel"))
	if err := os.Remove(h.current); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, filepath.Join(h.Dir, "store/sys-8"), h.current)
	// Running another system with the same kernel needs no reboot…
	st, err = h.transport(t, nil).Status(context.Background())
	if err != nil || st.NeedsReboot || st.CurrentSystem == st.BootedSystem {
		t.Fatalf("status with the same kernel = %+v, %v; want no reboot needed", st, err)
	}
	// …another kernel does.
	if err := os.Remove(filepath.Join(h.Dir, "store/sys-8/kernel")); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, filepath.Join(h.Dir, "store/kernel-b"), filepath.Join(h.Dir, "store/sys-8/kernel"))
	st, err = h.transport(t, nil).Status(context.Background())
	if err != nil || !st.NeedsReboot {
		t.Fatalf("status after a kernel change = %+v, %v; want NeedsReboot", st, err)
	}
}

func TestSSHInstallAgentTLSWritesRootOnlyFiles(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	systemctlLog := filepath.Join(h.Dir, "systemctl.log")
	h.WriteStandIn(t, "systemctl", "#!/bin/sh\nprintf '%s\\n' \"$*\" >> "+systemctlLog+"\n")
	tr := h.transport(t, nil)
	files := AgentTLSFiles{CACert: []byte("CA PEM\n"), Cert: []byte("CERT PEM\n"), Key: []byte("KEY PEM 'with' $(quotes)\n")}
	if err := tr.InstallAgentTLS(context.Background(), files); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(h.Dir, "tls")
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("tls dir: %v %v", fi, err)
	}
	for name, want := range map[string][]byte{"ca.crt": files.CACert, "tls.crt": files.Cert, "tls.key": files.Key} {
		p := filepath.Join(dir, name)
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s = %q, %v", name, got, err)
		}
		fi, _ := os.Stat(p)
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Fatalf("tls dir holds %d entries, want exactly 3 (no temp files)", len(entries))
	}
	if err := tr.RestartAgent(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(systemctlLog); string(got) != "restart nio-agent\n" {
		t.Fatalf("systemctl called as %q", got)
	}
}

func TestSSHConfirmTimeoutRollsBackWhenANewConnectionFails(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	calls := filepath.Join(h.Dir, "calls")
	// The "new system" locks the operator out (empties authorized_keys); the rollback
	// call is recorded.
	h.WriteStandIn(t, "nixos-rebuild", `#!/bin/sh
printf '%s\n' "$*" >> `+calls+`
case "$*" in *--rollback*) exit 0;; esac
: > `+h.AuthorizedKeysPath+`
`)
	res, err := h.transport(t, nil).Apply(context.Background(), ApplyRequest{
		OperationID: "op-7", Action: ActionSwitch, ConfirmTimeout: 10 * time.Second,
		Target: Target{FlakeDir: ".", FlakeAttr: "web"},
		Source: testSource(t, map[string]string{"flake.nix": "{}\n"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeRolledBack {
		t.Fatalf("outcome %s (%s), want RolledBack", res.Outcome, res.Message)
	}
	got, _ := os.ReadFile(calls)
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(lines) != 2 || lines[1] != "switch --rollback" {
		t.Fatalf("nixos-rebuild calls = %q", lines)
	}
}

func TestSSHConfirmTimeoutSucceedsWhenANewConnectionWorks(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	h.recordingRebuild(t)
	var phases []Phase
	res, err := h.transport(t, nil).Apply(context.Background(), ApplyRequest{
		OperationID: "op-8", Action: ActionSwitch, ConfirmTimeout: 10 * time.Second,
		Target: Target{FlakeDir: ".", FlakeAttr: "web"},
		Source: testSource(t, map[string]string{"flake.nix": "{}\n"}),
		OnEvent: func(ev Event) {
			if ev.Kind == EventPhase {
				phases = append(phases, ev.Phase)
			}
		},
	})
	if err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	if !slices.Contains(phases, PhaseAwaitingConfirm) {
		t.Fatalf("phases %v: the confirmation step did not run", phases)
	}
	if err := h.transport(t, nil).Confirm(context.Background(), "op-8"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Confirm over ssh = %v, want unsupported", err)
	}
}

func TestSSHRebuildRunsInTheOperationDirectory(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	// nixos-rebuild build leaves ./result in its working directory.
	h.WriteStandIn(t, "nixos-rebuild", "#!/bin/sh\npwd > "+h.record+"\nln -s /nowhere result\n")
	res, err := h.transport(t, nil).Apply(context.Background(), ApplyRequest{
		OperationID: "op-9", Action: ActionBuild,
		Target: Target{FlakeDir: ".", FlakeAttr: "web"},
		Source: testSource(t, map[string]string{"flake.nix": "{}\n"}),
	})
	if err != nil || res.Outcome != OutcomeSucceeded || res.StorePath != "" {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	if got, _ := os.ReadFile(h.record); string(got) != h.stateDir+"/op-9\n" {
		t.Fatalf("nixos-rebuild ran in %q", got)
	}
	if _, err := os.Stat(filepath.Join(h.stateDir, "op-9")); !os.IsNotExist(err) {
		t.Fatalf("the operation directory (with ./result) was left behind: %v", err)
	}
}

func TestSSHFileExistsTellsPresentFromAbsent(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	tr := h.transport(t, nil)
	present := filepath.Join(h.Dir, "installed")
	if err := os.WriteFile(present, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if ok, err := tr.FileExists(ctx, present); err != nil || !ok {
		t.Errorf("present file: %v %v", ok, err)
	}
	if ok, err := tr.FileExists(ctx, filepath.Join(h.Dir, "absent; touch "+present+".pwned")); err != nil || ok {
		t.Errorf("absent file: %v %v", ok, err)
	}
	if _, err := os.Stat(present + ".pwned"); err == nil {
		t.Error("the path was run as a command")
	}
}

// TestSSHFirstContactRecordsTheStrongestHostKey: a host with both an RSA and an
// ed25519 host key is recorded by its ed25519 key on first contact (x/crypto/ssh's
// default order would pick RSA), and a Machine whose recorded fingerprint is the RSA
// key's (recorded before) still connects, while a fingerprint of neither key is a
// mismatch naming the ed25519 key.
func TestSSHFirstContactRecordsTheStrongestHostKey(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{RSAHostKey: true})
	ed25519FP, rsaFP := h.HostKeyFingerprint(), ssh.FingerprintSHA256(h.RSAHostKey())
	tofu := h.transport(t, func(c *SSHConfig) { c.HostKey = "" })
	if p := tofu.Probe(context.Background()); !p.SSHReachable || p.SSHHostKeyFingerprint != ed25519FP {
		t.Fatalf("first contact recorded %q (reachable %v, %v); want the ed25519 key %s, not the RSA key %s",
			p.SSHHostKeyFingerprint, p.SSHReachable, p.SSHError, ed25519FP, rsaFP)
	}

	legacy := h.transport(t, func(c *SSHConfig) { c.HostKey, c.HostKeyFingerprint = "", rsaFP })
	if _, err := legacy.Status(context.Background()); err != nil {
		t.Fatalf("recorded RSA fingerprint refused: %v", err)
	}
	pinnedRSA := h.transport(t, func(c *SSHConfig) {
		c.HostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(h.RSAHostKey())))
	})
	if _, err := pinnedRSA.Status(context.Background()); err != nil {
		t.Fatalf("pinned RSA key refused: %v", err)
	}

	other := h.transport(t, func(c *SSHConfig) { c.HostKey, c.HostKeyFingerprint = "", "SHA256:"+strings.Repeat("A", 43) })
	_, err := other.Status(context.Background())
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) || mm.Got != ed25519FP || other.SeenHostKeyFingerprint() != ed25519FP {
		t.Fatalf("unknown fingerprint: %v (seen %s); want a mismatch naming %s", err, other.SeenHostKeyFingerprint(), ed25519FP)
	}
}
