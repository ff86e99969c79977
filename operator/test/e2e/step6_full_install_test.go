//go:build e2e

package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/homystack/nio/api/identity"
	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/controller"
	"github.com/homystack/nio/operator/test/harness"
)

const (
	installMachine = "fresh-01"
	installConfig  = "fresh-config"
)

// fullInstall: true against a host NIO has not installed runs nixos-anywhere (a
// recording stand-in: no kexec, no wipe) once, with the argv and extra files as
// designed; the installed host then runs the agent with the identity it was given.
// A configuration that has lost its status does not install again: the marker on the
// host says it is installed.
func TestFullInstallRunsNixosAnywhereOnce(t *testing.T) {
	walkGuide(t) // the git credentials Secret and a commit with .#worker
	ctx := testContext(t, 5*time.Minute)

	host, err := stack.NewHost(ctx, "fresh-host", true)
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, "create", "secret", "generic", "fresh-ssh-key", "--from-file=ssh-privatekey="+host.SSHKeyPath, "-n", harness.GuideNamespace)
	apply(t, ctx, "fresh-machine.yaml", `apiVersion: nio.homystack.com/v1alpha1
kind: Machine
metadata:
  name: `+installMachine+`
  namespace: default
spec:
  hostname: fresh-01
  ipAddress: `+host.Address+`
  sshKeySecretRef:
    name: fresh-ssh-key
`)
	configYAML := `apiVersion: nio.homystack.com/v1alpha1
kind: NixosConfiguration
metadata:
  name: ` + installConfig + `
  namespace: default
spec:
  gitRepo: "` + stack.Git.RepoURL + `"
  flake: ".#worker"
  fullInstall: true
  machineRef:
    name: ` + installMachine + `
  credentialsRef:
    name: git-credentials
  interval: 5s
`
	apply(t, ctx, "fresh-config.yaml", configYAML)
	waitInstalled(t, ctx, controller.ReasonInstalled)
	if err := host.Agent().WaitRunning(ctx, time.Minute); err != nil {
		t.Fatalf("the installed host's agent: %v", err)
	}

	runs := anywhereRuns(t)
	if len(runs) != 1 {
		t.Fatalf("nixos-anywhere ran %d times, want 1", len(runs))
	}
	run := filepath.Join(stack.AnywhereRecord, runs[0])
	argvBytes, err := os.ReadFile(filepath.Join(run, "argv"))
	if err != nil {
		t.Fatal(err)
	}
	argv := strings.Split(strings.TrimSuffix(string(argvBytes), "\n"), "\n")
	wantPair(t, argv, "--target-host", "root@"+host.Address)
	wantPair(t, argv, "-p", "22")
	wantPair(t, argv, "--ssh-option", "BatchMode=yes")
	if v := valueOf(argv, "--flake"); !strings.HasPrefix(v, "path:/") || !strings.HasSuffix(v, "#worker") {
		t.Errorf("--flake %q, want path:<source dir>#worker", v)
	}
	if valueOf(argv, "-i") == "" || valueOf(argv, "--extra-files") == "" {
		t.Errorf("argv lacks -i or --extra-files: %q", argv)
	}

	extra := filepath.Join(run, "extra-files")
	certPEM := readFile(t, extra, "var/lib/nio-agent/tls/tls.crt")
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("extra files: tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if want := identity.MachineDNSName(harness.GuideNamespace, installMachine); !slices.Contains(cert.DNSNames, want) {
		t.Errorf("the agent certificate names %q, want %q", cert.DNSNames, want)
	}
	readFile(t, extra, "var/lib/nio-agent/tls/ca.crt")
	for _, f := range []string{"var/lib/nio-agent/tls/tls.key", "etc/ssh/ssh_host_ed25519_key"} {
		info, err := os.Stat(filepath.Join(extra, f))
		if err != nil {
			t.Errorf("extra files: %v", err)
		} else if info.Mode().Perm()&0o077 != 0 {
			t.Errorf("extra file %s has mode %v, want private (0600)", f, info.Mode().Perm())
		}
	}
	var marker struct{ Machine, Namespace string }
	if err := json.Unmarshal(readFile(t, extra, "var/lib/nio/installed"), &marker); err != nil {
		t.Fatalf("marker: %v", err)
	}
	if marker.Machine != installMachine || marker.Namespace != harness.GuideNamespace {
		t.Errorf("marker = %+v, want Machine %s in %s", marker, installMachine, harness.GuideNamespace)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(readFile(t, extra, "etc/ssh/ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	// The Machine controller takes the key from the configuration's status on its
	// next pass (it is the Machine's one writer): wait for it, then lose the status.
	want := ssh.FingerprintSHA256(pub)
	if err := harness.WaitFor(ctx, "Machine "+installMachine+" takes the generated host key "+want, time.Minute, func() (bool, string, error) {
		m, err := stack.Control.Machine(ctx, harness.GuideNamespace, installMachine)
		if err != nil {
			return false, err.Error(), nil
		}
		return m.Status.SSHHostKeyFingerprint == want, "sshHostKeyFingerprint " + m.Status.SSHHostKeyFingerprint, nil
	}); err != nil {
		t.Fatal(err)
	}

	// Lose the status: delete and re-create the configuration, with the agent down so
	// only the marker on the host can tell.
	kubectl(t, ctx, "delete", "nixosconfiguration", installConfig, "-n", harness.GuideNamespace, "--timeout=2m")
	host.Agent().Kill()
	apply(t, ctx, "fresh-config.yaml", configYAML)
	waitInstalled(t, ctx, controller.ReasonAlreadyInstalled)
	if runs := anywhereRuns(t); len(runs) != 1 {
		t.Errorf("nixos-anywhere ran %d times after the status was lost, want still 1", len(runs))
	}
}

func waitInstalled(t *testing.T, ctx context.Context, reason string) {
	t.Helper()
	err := harness.WaitFor(ctx, "NixosConfiguration "+installConfig+" Installed ("+reason+")", 3*time.Minute, func() (bool, string, error) {
		c, err := stack.Control.Configuration(ctx, harness.GuideNamespace, installConfig)
		if err != nil {
			return false, err.Error(), nil
		}
		cond := meta.FindStatusCondition(c.Status.Conditions, nio.ConditionInstalled)
		if cond == nil {
			return false, "no Installed condition", nil
		}
		return c.Status.FullInstallCompleted && cond.Status == "True" && cond.Reason == reason, cond.Reason + ": " + cond.Message, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func apply(t *testing.T, ctx context.Context, name, manifest string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, "apply", "-f", p)
}

func anywhereRuns(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(stack.AnywhereRecord)
	if err != nil {
		t.Fatal(err)
	}
	var runs []string
	for _, e := range entries {
		runs = append(runs, e.Name())
	}
	return runs
}

func valueOf(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}

func wantPair(t *testing.T, argv []string, flag, value string) {
	t.Helper()
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag && argv[i+1] == value {
			return
		}
	}
	t.Errorf("argv lacks %s %s: %q", flag, value, argv)
}

func readFile(t *testing.T, dir, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		t.Fatalf("extra files: %v", err)
	}
	return b
}
