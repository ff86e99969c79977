package webhook

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// replayHarness remembers deliveries for an hour of its clock.
func replayHarness(t *testing.T, edit func(*Options)) (*harness, *clock) {
	t.Helper()
	h := newHarness(t, func(o *Options) {
		o.ReplayWindow = time.Hour
		if edit != nil {
			edit(o)
		}
	})
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h.rc.now = c.Now
	return h, c
}

var deliveryHeaders = map[string]string{
	ProviderGitHub: "X-GitHub-Delivery", ProviderGitLab: "X-Gitlab-Event-UUID", ProviderGitea: "X-Gitea-Delivery",
	ProviderForgejo: "X-Forgejo-Delivery", ProviderGeneric: GenericDeliveryHeader,
}

func TestReplayedDeliveryTriggersNothing(t *testing.T) {
	for _, pc := range providerCases {
		t.Run(pc.provider, func(t *testing.T) {
			h, _ := replayHarness(t, nil)
			body := fixture(t, pc.fixture)
			hdr := pc.headers(testSecret, "", body)
			hdr.Set(deliveryHeaders[pc.provider], "72d3162e-cc78-11e3-81ab-4c9367dc0958")
			expectStatus(t, h.post(pc.provider, hdr, body), http.StatusAccepted)
			rec := h.post(pc.provider, hdr, body)
			expectStatus(t, rec, http.StatusOK)
			if !strings.Contains(rec.Body.String(), `"result":"duplicate"`) {
				t.Errorf("replay answered %s", rec.Body.String())
			}
			if calls, _ := h.trigger.result(); calls != 1 {
				t.Errorf("trigger called %d times, want 1", calls)
			}
			if got := h.counter(h.rc.metrics.rejected, pc.provider, ReasonReplay); got != 1 {
				t.Errorf("rejected{replay} %v, want 1", got)
			}
		})
	}
}

// The delivery header is not signed. Where the body is (and unique per push), a
// replay with a fresh ID is still a replay; where it is not, only the ID tells.
func TestReplayWithAFreshDeliveryID(t *testing.T) {
	for _, pc := range providerCases {
		t.Run(pc.provider, func(t *testing.T) {
			h, _ := replayHarness(t, nil)
			body := fixture(t, pc.fixture)
			for i := range 2 {
				hdr := pc.headers(testSecret, "", body)
				hdr.Set(deliveryHeaders[pc.provider], fmt.Sprintf("delivery-%d", i))
				h.post(pc.provider, hdr, body)
			}
			want := 2
			if providers[pc.provider].uniqueBody {
				want = 1
			}
			if calls, _ := h.trigger.result(); calls != want {
				t.Errorf("trigger called %d times, want %d", calls, want)
			}
		})
	}
}

// A CI job may post the same generic body at every push, without an ID: each one
// triggers.
func TestGenericPushWithoutDeliveryIDIsNeverAReplay(t *testing.T) {
	h, _ := replayHarness(t, nil)
	body := fixture(t, "generic-push.json")
	for range 3 {
		expectStatus(t, h.post(ProviderGeneric, signedGeneric(body), body), http.StatusAccepted)
	}
}

// A push whose trigger failed was not handled: the forge's redelivery (same ID,
// same body) must run.
func TestFailedTriggerIsNotRememberedSoTheRedeliveryRuns(t *testing.T) {
	h, _ := replayHarness(t, nil)
	h.trigger.err = errors.New("list NixosConfigurations: connection refused")
	pc := providerCases[0]
	body := fixture(t, pc.fixture)
	hdr := pc.headers(testSecret, "", body)
	hdr.Set("X-GitHub-Delivery", "redelivered")
	expectStatus(t, h.post(pc.provider, hdr, body), http.StatusInternalServerError)
	h.trigger.err = nil
	expectStatus(t, h.post(pc.provider, hdr, body), http.StatusAccepted)
	expectStatus(t, h.post(pc.provider, hdr, body), http.StatusOK)
}

func TestDeliveriesAreForgottenAfterTheWindow(t *testing.T) {
	h, clk := replayHarness(t, nil)
	body := fixture(t, "generic-push.json")
	hdr := signedGeneric(body)
	hdr.Set(GenericDeliveryHeader, "once")
	expectStatus(t, h.post(ProviderGeneric, hdr, body), http.StatusAccepted)
	clk.Advance(59 * time.Minute)
	expectStatus(t, h.post(ProviderGeneric, hdr, body), http.StatusOK)
	clk.Advance(time.Minute)
	expectStatus(t, h.post(ProviderGeneric, hdr, body), http.StatusAccepted)
	if n := h.rc.deliveries.len(); n != 1 {
		t.Errorf("%d deliveries remembered, want 1", n)
	}
}

func TestRememberedDeliveriesAreBounded(t *testing.T) {
	h, _ := replayHarness(t, func(o *Options) { o.MaxDeliveries = 10 })
	body := fixture(t, "generic-push.json")
	for i := range 100 {
		hdr := signedGeneric(body)
		hdr.Set(GenericDeliveryHeader, fmt.Sprintf("d-%d", i))
		expectStatus(t, h.post(ProviderGeneric, hdr, body), http.StatusAccepted)
	}
	if n := h.rc.deliveries.len(); n != 10 {
		t.Fatalf("%d deliveries remembered, want 10", n)
	}
	hdr := signedGeneric(body)
	hdr.Set(GenericDeliveryHeader, "d-99")
	expectStatus(t, h.post(ProviderGeneric, hdr, body), http.StatusOK)
}

// Two copies of one delivery arriving at once trigger once.
func TestConcurrentCopiesOfADeliveryTriggerOnce(t *testing.T) {
	h, _ := replayHarness(t, nil)
	pc := providerCases[0]
	body := fixture(t, pc.fixture)
	hdr := pc.headers(testSecret, "", body)
	hdr.Set("X-GitHub-Delivery", "at-once")
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { h.post(pc.provider, hdr, body) })
	}
	wg.Wait()
	if calls, _ := h.trigger.result(); calls != 1 {
		t.Fatalf("trigger called %d times, want 1", calls)
	}
}

// Replays cost their source like unauthenticated deliveries: a flood of one
// captured delivery ends in 429s.
func TestReplayFloodIsThrottled(t *testing.T) {
	h, _ := replayHarness(t, func(o *Options) { o.RefusedBurst, o.RefusedInterval = 3, time.Minute })
	body := fixture(t, "generic-push.json")
	hdr := signedGeneric(body)
	hdr.Set(GenericDeliveryHeader, "captured")
	expectStatus(t, h.from(attacker, ProviderGeneric, hdr, body), http.StatusAccepted)
	for range 3 {
		expectStatus(t, h.from(attacker, ProviderGeneric, hdr, body), http.StatusOK)
	}
	expectStatus(t, h.from(attacker, ProviderGeneric, hdr, body), http.StatusTooManyRequests)
	// A new push from there still goes through.
	fresh := signedGeneric(body)
	fresh.Set(GenericDeliveryHeader, "new")
	expectStatus(t, h.from(attacker, ProviderGeneric, fresh, body), http.StatusAccepted)
}
