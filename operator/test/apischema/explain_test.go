package apischema

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestKubectlExplainShowsTheDocComments: `kubectl explain` is the user's manual, so the
// fields' doc comments must reach it through the published OpenAPI schema.
func TestKubectlExplainShowsTheDocComments(t *testing.T) {
	cases := map[string][]string{
		"machine.spec.sshHostKey":                 {"pins the host's SSH public key", "HostKeyMismatch"},
		"nixosconfiguration.spec.additionalFiles": {"written into the source tree before the build", "secretRef", "nixosFacter"},
		"nixosfleet.spec.strategy":                {"supersedes", "a new rollout starts from the canary", "onFailure"},
	}
	for field, wants := range cases {
		// The API server publishes a new CRD's OpenAPI schema asynchronously.
		deadline := time.Now().Add(60 * time.Second)
		var out string
		for {
			b, err := exec.Command(env.Kubectl(), "--kubeconfig", env.Kubeconfig, "explain", field).CombinedOutput()
			out = string(b)
			if err == nil && strings.Contains(out, wants[0]) || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		for _, want := range wants {
			if !strings.Contains(strings.Join(strings.Fields(out), " "), want) {
				t.Errorf("kubectl explain %s does not show %q:\n%s", field, want, out)
			}
		}
	}
}
