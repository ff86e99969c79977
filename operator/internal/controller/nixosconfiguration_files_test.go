package controller

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/testkit/facterfixture"
)

const dbPassword = "correct-horse-battery-staple-91"

// TestAdditionalFilesReachTheSource: inline and nixos-facter files are in the archive
// the host receives; the Secret's is not — the host gets it beside the archive, with
// its mode, and the archive the generated nio-secrets.nix naming where it lives; a
// change of the Secret applies again with the same source; no secret value is in any
// event, condition, status or log line.
func TestAdditionalFilesReachTheSource(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	report := facterfixture.Report
	fleet := hosttest.NewFleet()
	fleet.Host("worker-01").Set(func(h *hosttest.Host) { h.FactsReport = report })
	f.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-secret", Namespace: f.ns},
		Data: map[string][]byte{"password": []byte(dbPassword)}})
	f.op = startOperator(t, f.ns, fleet, nil)

	// The usage guide's additionalFiles snippet.
	inline := "{ config, pkgs, ... }:\n{\n  services.postgresql.enable = true;\n}\n"
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) {
		c.Spec.AdditionalFiles = []nio.AdditionalFile{
			{Path: "secrets/database-password", Value: nio.AdditionalFileValue{SecretRef: &nio.SecretKeyReference{Name: "db-secret"}}},
			{Path: "config/custom.nix", Value: nio.AdditionalFileValue{Inline: &inline}},
			{Path: "facts/system-info", Value: nio.AdditionalFileValue{NixosFacter: ptrTo(true)}},
		}
	}))
	f.waitApplied("worker-config", "worker-01", first)

	host := fleet.Host("worker-01")
	op := host.Ops()[0]
	for name, content := range op.Files {
		if strings.Contains(content, dbPassword) || strings.HasPrefix(name, "secrets/") {
			t.Errorf("the source holds the secret (%s)", name)
		}
	}
	if want := `  "secrets/database-password" = "/run/nio-secrets/current/secrets/database-password";`; !strings.Contains(op.Files["nio-secrets.nix"], want) {
		t.Errorf("nio-secrets.nix = %q, want it to map the secret's path", op.Files["nio-secrets.nix"])
	}
	if s := op.Secrets; s == nil || len(s.Files) != 1 || s.Files[0].Path != "secrets/database-password" || string(s.Files[0].Data) != dbPassword ||
		s.Files[0].Mode != 0o400 || !strings.HasPrefix(s.Digest, "hmac-sha256:") {
		t.Errorf("secrets sent = %+v, want the Secret's value, 0400, with a keyed digest", s)
	}
	if op.Files["config/custom.nix"] != inline || op.Modes["config/custom.nix"] != 0o644 {
		t.Errorf("inline file = %q", op.Files["config/custom.nix"])
	}
	if op.Files["facts/system-info"] != string(report) {
		t.Errorf("facter file has %d bytes, want the Machine's %d-byte report", len(op.Files["facts/system-info"]), len(report))
	}
	m := getMachine(t, f.ns, "worker-01")
	if m.Status.Facts == nil || m.Status.Facts.System != "x86_64-linux" || m.Status.Facts.MemoryBytes != 4026531840 || m.Status.LastHardwareScanTime == nil {
		t.Errorf("Machine facts = %+v", m.Status.Facts)
	}

	// A new Secret value is a new source: applied without a new commit.
	ctx := context.Background()
	s := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: "db-secret"}, s); err != nil {
		t.Fatal(err)
	}
	rotated := dbPassword + "-rotated"
	s.Data["password"] = []byte(rotated)
	if err := env.Client.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "rotated secret applied", func() error {
		ops := host.Ops()
		if last := ops[len(ops)-1]; len(ops) < 2 || last.Secrets == nil || len(last.Secrets.Files) != 1 || string(last.Secrets.Files[0].Data) != rotated || last.Outcome != "Succeeded" {
			return errorf("%d applies", len(ops))
		}
		return nil
	})
	c := getConfig(t, f.ns, "worker-config")
	if h := c.Status.History; len(h) != 2 || h[0].Commit != first || h[0].SourceDigest != h[1].SourceDigest || h[0].SecretsDigest == h[1].SecretsDigest ||
		c.Status.AppliedSecretsDigest != h[0].SecretsDigest {
		t.Errorf("history = %+v, want two applies of one commit and one source, with different secrets", h)
	}

	// No secret anywhere a person or a log collector can read.
	for _, secret := range []string{dbPassword, rotated, testToken} {
		assertNowhere(t, f.ns, secret)
	}
}

// assertNowhere fails if value appears in the events, statuses or operator logs.
func assertNowhere(t *testing.T, ns, value string) {
	t.Helper()
	var places []string
	for _, e := range eventsOf(t, ns, "worker-config") {
		places = append(places, e.Note)
	}
	for _, e := range eventsOf(t, ns, "worker-01") {
		places = append(places, e.Note)
	}
	c, _ := json.Marshal(getConfig(t, ns, "worker-config").Status)
	m, _ := json.Marshal(getMachine(t, ns, "worker-01").Status)
	places = append(places, string(c), string(m), logs.String())
	for i, p := range places {
		if strings.Contains(p, value) {
			t.Errorf("secret value found in place %d of %d: %.200s", i, len(places), p)
		}
	}
}
