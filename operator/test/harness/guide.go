package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// The usage guide's names.
const (
	GuideNamespace     = "default"
	GuideMachine       = "worker-01"
	GuideConfiguration = "worker-config"
	// GuideInterval is the poll interval the demo's configuration sets (the guide's
	// example leaves the 5m default).
	GuideInterval = "5s"
)

// Generous bounds: Nix builds on a loaded 2-core machine.
const (
	agentTimeout = 90 * time.Second
	applyTimeout = 3 * time.Minute
)

// WalkGuide runs steps 2–5 of the usage guide with kubectl, against the demo host
// and the git server, and waits for what "Monitoring Status" promises: the Machine
// with hasConfiguration, appliedConfiguration, appliedCommit = the server's HEAD and
// lastAppliedTime.
func (s *Stack) WalkGuide(ctx context.Context) error {
	k := s.Control
	s.Printf("\n== Step 2: the Machine's SSH key Secret\n")
	if _, err := k.Run(ctx, "create", "secret", "generic", "worker-ssh-key",
		"--from-file=ssh-privatekey="+s.Host.SSHKeyPath, "--namespace="+GuideNamespace); err != nil {
		return err
	}

	s.Printf("\n== Step 3: the Machine (examples/machine-example.yaml, aimed at the demo host)\n")
	machine, err := s.example("machine-example.yaml", "machine.yaml", map[string]string{
		"  ipAddress: 192.168.1.100\n": "  ipAddress: " + s.Host.Address + "\n",
	}, "")
	if err != nil {
		return err
	}
	if _, err := k.Run(ctx, "apply", "-f", machine); err != nil {
		return err
	}
	s.Printf("\nThe operator probes the host over SSH, delivers the agent's TLS identity and runs `systemctl restart nio-agent` there:\n")
	if err := s.Host.Agent().WaitRunning(ctx, agentTimeout); err != nil {
		return err
	}
	if err := s.WaitMachine(ctx, "the agent connected", agentTimeout, func(m *nio.Machine) (bool, string) {
		if m.Status.Agent == nil || !m.Status.Agent.Connected {
			return false, "agent not connected"
		}
		return true, ""
	}); err != nil {
		return err
	}
	if _, err := k.Run(ctx, "get", "machine", GuideMachine, "-n", GuideNamespace); err != nil {
		return err
	}

	s.Printf("\n== Step 4: the git credentials Secret (the token is the git server's)\n")
	s.Printf("\n$ kubectl create secret generic git-credentials --from-literal=token=<the server's token> --namespace=%s\n", GuideNamespace)
	out, err := k.Quiet(ctx, "create", "secret", "generic", "git-credentials", "--from-literal=token="+s.Git.Token, "--namespace="+GuideNamespace)
	s.Printf("%s", out)
	if err != nil {
		return err
	}

	s.Printf("\n== Step 5: the NixosConfiguration (examples/nixosconfiguration-example.yaml, from the local git server)\n")
	conf, err := s.example("nixosconfiguration-example.yaml", "nixosconfiguration.yaml", map[string]string{
		`  gitRepo: "https://github.com/your-org/nixos-configs.git"` + "\n": `  gitRepo: "` + s.Git.RepoURL + `"` + "\n",
	}, "  interval: "+GuideInterval+"\n")
	if err != nil {
		return err
	}
	if _, err := k.Run(ctx, "apply", "-f", conf); err != nil {
		return err
	}
	head, err := s.Git.Head()
	if err != nil {
		return err
	}
	if err := s.WaitApplied(ctx, head); err != nil {
		return err
	}
	s.Printf("\n== Monitoring status\n")
	if _, err := k.Run(ctx, "get", "machine", GuideMachine, "-o", "yaml"); err != nil {
		return err
	}
	if _, err := k.Run(ctx, "get", "events", "--field-selector", "involvedObject.name="+GuideConfiguration); err != nil {
		return err
	}
	return nil
}

// WaitApplied waits until the Machine says commit is applied from the guide's
// configuration, with every field the guide promises.
func (s *Stack) WaitApplied(ctx context.Context, commit string) error {
	return s.WaitMachine(ctx, "commit "+commit+" applied", applyTimeout, func(m *nio.Machine) (bool, string) {
		st := m.Status
		switch {
		case !st.HasConfiguration:
			return false, "hasConfiguration false"
		case st.AppliedConfiguration != GuideConfiguration:
			return false, "appliedConfiguration " + st.AppliedConfiguration
		case st.AppliedCommit != commit:
			return false, "appliedCommit " + st.AppliedCommit
		case st.LastAppliedTime == nil:
			return false, "no lastAppliedTime"
		}
		return true, ""
	})
}

// WaitMachine waits until cond holds for the guide's Machine.
func (s *Stack) WaitMachine(ctx context.Context, what string, timeout time.Duration, cond func(*nio.Machine) (bool, string)) error {
	return s.WaitMachineNamed(ctx, GuideMachine, what, timeout, cond)
}

// WaitMachineNamed waits until cond holds for the Machine name of the guide's namespace.
func (s *Stack) WaitMachineNamed(ctx context.Context, name, what string, timeout time.Duration, cond func(*nio.Machine) (bool, string)) error {
	return WaitFor(ctx, "Machine "+name+": "+what, timeout, func() (bool, string, error) {
		m, err := s.Control.Machine(ctx, GuideNamespace, name)
		if err != nil {
			return false, err.Error(), nil
		}
		ok, why := cond(m)
		return ok, why, nil
	})
}

// WaitConfiguration waits until cond holds for the guide's NixosConfiguration.
func (s *Stack) WaitConfiguration(ctx context.Context, what string, timeout time.Duration, cond func(*nio.NixosConfiguration) (bool, string)) error {
	return WaitFor(ctx, "NixosConfiguration "+GuideConfiguration+": "+what, timeout, func() (bool, string, error) {
		c, err := s.Control.Configuration(ctx, GuideNamespace, GuideConfiguration)
		if err != nil {
			return false, err.Error(), nil
		}
		ok, why := cond(c)
		return ok, why, nil
	})
}

// example copies examples/<name> to the scratch file out with each replacement made
// (each must match exactly once) and appendSpec added at the end, prints the diff,
// and returns out's path.
func (s *Stack) example(name, out string, replace map[string]string, appendSpec string) (string, error) {
	src := s.Root + "/examples/" + name
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	text := string(b)
	for old, repl := range replace {
		if n := strings.Count(text, old); n != 1 {
			return "", fmt.Errorf("examples/%s: expected %q once, found it %d times", name, strings.TrimSpace(old), n)
		}
		text = strings.Replace(text, old, repl, 1)
	}
	if appendSpec != "" {
		if !strings.HasSuffix(text, "\n") {
			text += "\n"
		}
		text += appendSpec
	}
	dst := s.Path(out)
	if err := os.WriteFile(dst, []byte(text), 0o644); err != nil {
		return "", err
	}
	diff, _ := exec.Command("diff", "-u", "--label", "examples/"+name, "--label", out, src, dst).Output()
	s.Printf("\n$ diff -u examples/%s %s\n%s", name, out, diff)
	return dst, nil
}
