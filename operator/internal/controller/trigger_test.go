package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/operator/internal/webhook"
)

// TestVerifiedPushTriggersExactlyThatRepository: a signed push through the webhook
// receiver makes the configurations of that repository see the new commit at once
// (the refs cache is bypassed), and no other configuration.
func TestVerifiedPushTriggersExactlyThatRepository(t *testing.T) {
	f := newFixture(t)
	other := f.srv.NewRepo(t, "other-configs")
	first := f.commit("1")
	otherFirst := other.CommitFiles(t, map[string]string{"flake.nix": "{ }"}, "other 1")
	fleet := hosttest.NewFleet()
	// Refs are cached for an hour: only the push can reveal a new commit.
	f.op = startOperator(t, f.ns, fleet, nil, func(o *source.Options) { o.MinInterval = time.Hour })
	hourly := func(c *nio.NixosConfiguration) { c.Spec.Interval.Duration = time.Hour }
	f.create(f.machine("worker-02"), f.machine("worker-03"))
	f.create(
		f.config("worker-config", "worker-01", hourly),
		f.config("worker-02-config", "worker-02", hourly),
		f.config("unrelated", "worker-03", hourly, func(c *nio.NixosConfiguration) { c.Spec.GitRepo = other.URL() }),
	)
	f.waitApplied("worker-config", "worker-01", first)
	f.waitApplied("worker-02-config", "worker-02", first)
	f.waitApplied("unrelated", "worker-03", otherFirst)

	second := f.commit("2")
	other.CommitFiles(t, map[string]string{"flake.nix": "{ }", "x": "2"}, "other 2")
	time.Sleep(2 * time.Second) // polls and Machine probes pass; nothing may notice
	if c := getConfig(t, f.ns, "worker-config"); c.Status.AppliedCommit != first {
		t.Fatalf("applied %s before any push was announced", c.Status.AppliedCommit)
	}

	secret := []byte("webhook-secret")
	recv, err := webhook.NewReceiver(webhook.Options{
		Secret: func(context.Context) ([]byte, error) { return secret, nil },
		Trigger: func(ctx context.Context, urls []string) (int, error) {
			return f.op.trigger.Repos(ctx, webhook.NewRepoSet(urls).Contains)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	body, _ := json.Marshal(webhook.GenericPush{Repository: f.repo.URL(), Ref: "refs/heads/main", After: second})
	req, _ := http.NewRequest(http.MethodPost, srv.URL+webhook.PathPrefix+"generic", bytes.NewReader(body))
	req.Header.Set(webhook.GenericSignatureHeader, webhook.Sign(secret, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("push answered %d", resp.StatusCode)
	}
	f.waitApplied("worker-config", "worker-01", second)
	f.waitApplied("worker-02-config", "worker-02", second)
	time.Sleep(2 * time.Second)
	if c := getConfig(t, f.ns, "unrelated"); c.Status.AppliedCommit != otherFirst || len(c.Status.History) != 1 {
		t.Errorf("the other repository's configuration moved to %s (%d applies)", c.Status.AppliedCommit, len(c.Status.History))
	}
}

// TestPushTriggersFleetsNotTheirConfigurations: a push queues each fleet of the
// repository once (it resolves the new commit and moves its Machines), and the
// configurations that follow their ref; a fleet's own configurations, pinned to the
// commit their fleet chose, are not counted or queued.
func TestPushTriggersFleetsNotTheirConfigurations(t *testing.T) {
	f := &fleetFixture{fixture: newFixture(t), hosts: hosttest.NewFleet()}
	other := f.srv.NewRepo(t, "other-configs")
	other.CommitFiles(t, map[string]string{"flake.nix": "{ }"}, "other 1")
	first := f.commit("1")
	// Refs are cached for an hour and nothing polls sooner: only the push can reveal
	// a new commit.
	f.op = startOperator(t, f.ns, f.hosts, nil, func(o *source.Options) { o.MinInterval = time.Hour })
	hourly := func(c *nio.NixosConfiguration) { c.Spec.Interval.Duration = time.Hour }
	f.machines(web, "web-01", "web-02", "web-03")
	f.create(f.config("worker-config", "worker-01", hourly),
		f.fleet("web", func(fl *nio.NixosFleet) { fl.Spec.Template.Interval.Duration = time.Hour }),
		f.fleet("elsewhere", func(fl *nio.NixosFleet) {
			fl.Spec.MachineSelector.MatchLabels = map[string]string{"role": "other"}
			fl.Spec.Template.GitRepo, fl.Spec.Template.CredentialsRef = other.URL(), nil
		}))
	f.waitApplied("worker-config", "worker-01", first)
	f.waitFleet("web", "first rollout", rolledOut(first, 3))

	second := f.commit("2")
	n, err := f.op.trigger.Repos(context.Background(), webhook.NewRepoSet([]string{f.repo.URL()}).Contains)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("the push queued %d objects, want 2: the configuration and the fleet, not the fleet's 3 configurations nor the other repository's fleet", n)
	}
	f.waitApplied("worker-config", "worker-01", second)
	f.waitFleet("web", "the pushed commit", rolledOut(second, 3))
}
