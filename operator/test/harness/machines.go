package harness

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// StartMachineHost starts one more demo host (files under name in the run's
// directory) and registers it as the Machine name, in the guide's namespace, with
// labels: the Secret <name>-ssh-key with the operator's key for that host, and the
// Machine pinned to the host's SSH key, both with kubectl. It returns once the
// operator has delivered the agent's identity and the agent is connected. The caller
// deletes the Machine and the Secret, and closes the host (Host.Close), when done.
func (s *Stack) StartMachineHost(ctx context.Context, name string, labels map[string]string) (*Host, error) {
	s.Printf("\n== Starting demo host %s for the Machine %s\n", name, name)
	h, err := s.NewHost(ctx, name, false)
	if err != nil {
		return nil, err
	}
	secret := name + "-ssh-key"
	if _, err := s.Control.Run(ctx, "create", "secret", "generic", secret,
		"--from-file=ssh-privatekey="+h.SSHKeyPath, "--namespace="+GuideNamespace); err != nil {
		return h, err
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var lb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&lb, "    %s: %q\n", k, labels[k])
	}
	manifest := fmt.Sprintf(`apiVersion: nio.homystack.com/v1alpha1
kind: Machine
metadata:
  name: %s
  namespace: %s
  labels:
%sspec:
  hostname: %s
  ipAddress: %s
  sshHostKey: %q
  sshKeySecretRef:
    name: %s
`, name, GuideNamespace, lb.String(), name, h.Address, h.HostKey, secret)
	path := s.Path(name + "-machine.yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		return h, err
	}
	s.Printf("\n$ cat %s\n%s", path, manifest)
	if _, err := s.Control.Run(ctx, "apply", "-f", path); err != nil {
		return h, err
	}
	if err := h.Agent().WaitRunning(ctx, agentTimeout); err != nil {
		return h, err
	}
	err = s.WaitMachineNamed(ctx, name, "the agent connected", agentTimeout, func(m *nio.Machine) (bool, string) {
		if m.Status.Agent == nil || !m.Status.Agent.Connected {
			return false, "agent not connected"
		}
		return true, ""
	})
	return h, err
}
