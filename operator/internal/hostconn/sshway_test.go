package hostconn

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/outcome"
)

// TestProbeReadsNoSSHKeySecretWhileTheAgentAnswers: a Machine whose agent answers
// and whose host key is recorded is probed without reading its SSH key Secret (an
// uncached API read per Machine per probe interval at fleet scale). When SSH is
// needed the Secret is read, once per Host.
func TestProbeReadsNoSSHKeySecretWhileTheAgentAnswers(t *testing.T) {
	ctx := context.Background()
	issuer := newIssuer(t)
	agent := startAgent(t, issuer, "worker-01")
	secrets := countSecretReads(keySecret("worker-01-ssh-key", []byte("not a key")))
	f := &Factory{Client: secrets, Credentials: issuer.OperatorCredentials()}
	t.Cleanup(f.Close)
	m := machine("worker-01", agent.port)
	m.Status.SSHHostKeyFingerprint = "SHA256:recorded"

	for range 3 {
		h, err := f.Open(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if p := h.Probe(ctx); !p.AgentReachable || !p.SSHSkipped {
			t.Fatalf("probe = %+v, want the agent reachable and SSH skipped", p)
		}
		if _, err := h.Status(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := secrets.n.Load(); n != 0 {
		t.Fatalf("%d reads of the SSH key Secret over 3 passes of a Machine whose agent answers, want 0", n)
	}

	m.Status.SSHHostKeyFingerprint = "" // the probe logs in to record it
	h, err := f.Open(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if p := h.Probe(ctx); p.SSHSkipped || !errors.Is(p.SSHError, outcome.ErrConfig) {
		t.Fatalf("probe = %+v, want SSH tried and the unparsable key a configuration error", p)
	}
	if _, err := h.InstallMarkerPresent(ctx); !errors.Is(err, outcome.ErrConfig) {
		t.Fatalf("InstallMarkerPresent = %v, want the configuration error", err)
	}
	if n := secrets.n.Load(); n != 1 {
		t.Fatalf("%d reads of the SSH key Secret by a Host that needed SSH twice, want 1", n)
	}
}

// TestMissingSSHKeySecretStallsWhereSSHIsNeeded: Open reads nothing, and every SSH
// call of the Host fails with the stalling SSHKeyMissing error Open used to return.
func TestMissingSSHKeySecretStallsWhereSSHIsNeeded(t *testing.T) {
	ctx := context.Background()
	m := machine("worker-02", 0)
	m.Spec.Agent.Disabled = true
	secrets := countSecretReads()
	h, err := (&Factory{Client: secrets}).Open(ctx, m)
	if err != nil {
		t.Fatalf("Open = %v, want no error: the Secret is read when SSH is needed", err)
	}
	if n := secrets.n.Load(); n != 0 {
		t.Fatalf("Open read %d Secrets", n)
	}
	stalled := func(what string, err error) {
		t.Helper()
		if kind, reason := outcome.Classify(err); kind != outcome.KindStalling || reason != host.ReasonSSHKeyMissing ||
			!strings.Contains(err.Error(), "worker-02-ssh-key") {
			t.Fatalf("%s = %v (kind %v, reason %q), want Stalled SSHKeyMissing naming the Secret", what, err, kind, reason)
		}
	}
	stalled("probe's SSH error", h.Probe(ctx).SSHError)
	_, err = h.Status(ctx)
	stalled("Status", err)
	_, err = h.InstallMarkerPresent(ctx)
	stalled("InstallMarkerPresent", err)
}

// TestUnparsableSSHKeyIsAConfigurationError: a Secret whose key does not parse is
// the user's to fix (the controllers stall instead of retrying), and the error does
// not quote the Secret's content.
func TestUnparsableSSHKeyIsAConfigurationError(t *testing.T) {
	const garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90LWEta2V5LXNlY3JldC12YWx1ZQ==\n-----END OPENSSH PRIVATE KEY-----\n"
	ctx := context.Background()
	m := machine("worker-01", 0)
	m.Spec.SSHKeySecretRef.Name = "key"
	m.Spec.Agent.Disabled = true
	h, err := (&Factory{Client: countSecretReads(keySecret("key", []byte(garbage)))}).Open(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.Status(ctx)
	if !errors.Is(err, outcome.ErrConfig) {
		t.Fatalf("Status over SSH = %v, want a configuration error", err)
	}
	if strings.Contains(err.Error(), "bm90LWEta2V5") {
		t.Fatalf("error quotes the key: %v", err)
	}
	if p := h.Probe(ctx); !errors.Is(p.SSHError, outcome.ErrConfig) {
		t.Fatalf("probe = %+v, want the configuration error", p)
	}
}
