//go:build e2e

package systemdhost

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/nixtest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The systemd-host fixture's variable files (testkit/nixtest/flakes/systemd-host).
const (
	varKernel = "kernel.txt"
	varDelay  = "activation-delay.txt"
	varHold   = "hold.txt"
)

// libGreeting is what the fixture's locked input, fixture-lib, says; the built
// system carries it in $out/fixture-lib.
const libGreeting = "hello from fixture-lib"

var (
	setupOnce sync.Once
	setupErr  error
	// lockFile is the fixture's flake.lock, made on the host by `nix flake lock`.
	lockFile string
	// versions makes every pushed system a new store path.
	versions int
	// first is what the setup applied.
	first pushed
)

// pushed is a commit of the fixture and the version it carries: the system it
// builds is nixos-system-host-<version>.
type pushed struct{ commit, version string }

// setUp creates the Machine and the configuration once per package run and waits for
// the first apply; later calls wait until the host runs the repository's HEAD and no
// operation is in flight, so each test starts from a settled host.
func setUp(t *testing.T) {
	t.Helper()
	setupOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		setupErr = setUpHost(ctx)
	})
	if setupErr != nil {
		t.Fatalf("setting up the systemd host failed: %v", setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	head, err := stack.Git.Head()
	if err != nil {
		t.Fatal(err)
	}
	if err := waitConfiguration(ctx, "settled on "+head, 4*time.Minute, func(c *nio.NixosConfiguration) (bool, string) {
		return c.Status.AppliedCommit == head && c.Status.CurrentOperation == nil,
			fmt.Sprintf("appliedCommit %s, operation %+v", c.Status.AppliedCommit, c.Status.CurrentOperation)
	}); err != nil {
		t.Fatal(err)
	}
}

func setUpHost(ctx context.Context) error {
	k := stack.Control
	stack.Printf("\n== The fixture's locked input: a git repository on the host, %s\n", harness.SystemdHostLibRepo)
	if _, err := host.Shell(ctx, `
		mkdir -p "$1" && cd "$1" && git init -q -b main .
		printf '{\n  outputs = { self }: { lib.greeting = "%s"; };\n}\n' "$2" > flake.nix
		git add flake.nix
		git -c user.name=nio -c user.email=nio@localhost commit -q -m fixture-lib`,
		harness.SystemdHostLibRepo, libGreeting); err != nil {
		return err
	}
	// The lock is made where the input is, by the host's Nix, and committed with the
	// flake: what a user's repository holds.
	if err := nixtest.WriteFlake(host.Path("/root/fixture"), "systemd-host", nil); err != nil {
		return err
	}
	if _, err := host.Exec(ctx, "nix", "flake", "lock", "/root/fixture"); err != nil {
		return err
	}
	b, err := os.ReadFile(host.Path("/root/fixture/flake.lock"))
	if err != nil {
		return err
	}
	lockFile = string(b)
	stack.Printf("flake.lock:\n%s\n", lockFile)

	if _, err := k.Run(ctx, "create", "secret", "generic", sshSecret,
		"--from-file=ssh-privatekey="+host.SSHKeyPath, "--namespace="+namespace); err != nil {
		return err
	}
	if _, err := k.Quiet(ctx, "create", "secret", "generic", gitSecret,
		"--from-literal=token="+stack.Git.Token, "--namespace="+namespace); err != nil {
		return err
	}
	if first, err = push(map[string]string{}); err != nil {
		return err
	}
	if err := apply(ctx, "machine.yaml", fmt.Sprintf(`apiVersion: nio.homystack.com/v1alpha1
kind: Machine
metadata:
  name: %s
  namespace: %s
spec:
  hostname: %s
  ipAddress: %s
  sshUser: root
  sshKeySecretRef:
    name: %s
  sshHostKey: %s
`, machineName, namespace, machineName, host.Address, sshSecret, host.HostKey)); err != nil {
		return err
	}
	if err := apply(ctx, "configuration.yaml", configuration("switch")); err != nil {
		return err
	}
	return waitApplied(ctx, first.commit)
}

// configuration is the suite's NixosConfiguration with action.
func configuration(action string) string {
	return fmt.Sprintf(`apiVersion: nio.homystack.com/v1alpha1
kind: NixosConfiguration
metadata:
  name: %s
  namespace: %s
spec:
  gitRepo: %q
  flake: ".#host"
  machineRef:
    name: %s
  credentialsRef:
    name: %s
  interval: 5s
  action: %s
  rollback:
    enabled: true
    confirmTimeout: %s
`, configName, namespace, stack.Git.RepoURL, machineName, gitSecret, action, confirmWindow)
}

// apply writes manifest to the run's directory and applies it with kubectl.
func apply(ctx context.Context, name, manifest string) error {
	p := stack.Path(name)
	if err := os.WriteFile(p, []byte(manifest), 0o644); err != nil {
		return err
	}
	_, err := stack.Control.Run(ctx, "apply", "-f", p)
	return err
}

// push commits a new version of the fixture with vars and the lock file.
func push(vars map[string]string) (pushed, error) {
	versions++
	p := pushed{version: strconv.Itoa(versions)}
	all := map[string]string{nixtest.VarVersion: p.version}
	for k, v := range vars {
		all[k] = v
	}
	var err error
	p.commit, err = stack.Git.CommitFixtureFiles("systemd-host", all, map[string]string{"flake.lock": lockFile}, "host: version "+p.version)
	return p, err
}

// mustPush is push for tests.
func mustPush(t *testing.T, vars map[string]string) pushed {
	t.Helper()
	p, err := push(vars)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitApplied waits until the configuration and the Machine both say commit is
// applied.
func waitApplied(ctx context.Context, commit string) error {
	if err := waitConfiguration(ctx, "commit "+commit+" applied", 4*time.Minute, func(c *nio.NixosConfiguration) (bool, string) {
		return c.Status.AppliedCommit == commit, "appliedCommit " + c.Status.AppliedCommit + "; " + readyText(c.Status.Conditions)
	}); err != nil {
		return err
	}
	return waitMachine(ctx, "commit "+commit+" recorded", time.Minute, func(m *nio.Machine) (bool, string) {
		return m.Status.AppliedCommit == commit, "appliedCommit " + m.Status.AppliedCommit
	})
}

func waitConfiguration(ctx context.Context, what string, timeout time.Duration, cond func(*nio.NixosConfiguration) (bool, string)) error {
	return harness.WaitFor(ctx, "NixosConfiguration "+configName+": "+what, timeout, func() (bool, string, error) {
		c, err := stack.Control.Configuration(ctx, namespace, configName)
		if err != nil {
			return false, err.Error(), nil
		}
		ok, why := cond(c)
		return ok, why, nil
	})
}

func waitMachine(ctx context.Context, what string, timeout time.Duration, cond func(*nio.Machine) (bool, string)) error {
	return harness.WaitFor(ctx, "Machine "+machineName+": "+what, timeout, func() (bool, string, error) {
		m, err := stack.Control.Machine(ctx, namespace, machineName)
		if err != nil {
			return false, err.Error(), nil
		}
		ok, why := cond(m)
		return ok, why, nil
	})
}

func configurationNow(t *testing.T, ctx context.Context) *nio.NixosConfiguration {
	t.Helper()
	c, err := stack.Control.Configuration(ctx, namespace, configName)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func machineNow(t *testing.T, ctx context.Context) *nio.Machine {
	t.Helper()
	m, err := stack.Control.Machine(ctx, namespace, machineName)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// historyOf is the newest history entry of commit, nil when there is none.
func historyOf(c *nio.NixosConfiguration, commit string) *nio.HistoryEntry {
	for i := range c.Status.History {
		if h := &c.Status.History[i]; h.Commit == commit {
			return h
		}
	}
	return nil
}

func readyText(conds []metav1.Condition) string {
	for _, c := range conds {
		if c.Type == nio.ConditionReady {
			return "Ready=" + string(c.Status) + " " + c.Reason + ": " + c.Message
		}
	}
	return "no Ready condition"
}

// activation is a line of the fixture's activation log:
// "<step> <action> <system> unit=<unit>".
type activation struct{ step, action, system, unit string }

// activations are the lines of the fixture's activation log for the system of p.
func activations(p pushed) ([]activation, error) {
	lines, err := host.Activations()
	if err != nil {
		return nil, err
	}
	var out []activation
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 4 && strings.HasSuffix(f[2], "-nixos-system-host-"+p.version) {
			out = append(out, activation{f[0], f[1], f[2], strings.TrimPrefix(f[3], "unit=")})
		}
	}
	return out, nil
}

// waitActivation waits until the activation log has step for action of p's system.
func waitActivation(ctx context.Context, p pushed, step, action string) (activation, error) {
	var found activation
	err := harness.WaitFor(ctx, "activation "+step+" "+action+" of version "+p.version, 3*time.Minute, func() (bool, string, error) {
		all, err := activations(p)
		if err != nil {
			return false, "", err
		}
		for _, a := range all {
			if a.step == step && a.action == action {
				found = a
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%v", all), nil
	})
	return found, err
}

// release lets a held activation (hold.txt = yes) go on.
func release(t *testing.T, ctx context.Context) {
	t.Helper()
	if _, err := host.Shell(ctx, `mkdir -p "${1%/*}" && touch "$1"`, harness.SystemdHostRelease); err != nil {
		t.Fatal(err)
	}
}
