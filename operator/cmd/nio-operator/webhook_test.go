package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/webhook"
	"github.com/homystack/nio/operator/test/harness"
)

// webhookSecret creates (or replaces) the Secret nio-webhook with token, and
// deletes it when the test ends.
func webhookSecret(t *testing.T, token string) *corev1.Secret {
	t.Helper()
	ctx := context.Background()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: harness.OperatorNamespace, Name: "nio-webhook"},
		Data: map[string][]byte{"token": []byte(token)}}
	_ = cp.Admin.Delete(ctx, s.DeepCopy())
	if err := cp.Admin.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Admin.Delete(context.Background(), s.DeepCopy()) })
	return s
}

// sender posts deliveries from one local address (127.0.0.x: every loopback
// address reaches the receiver on 127.0.0.1).
type sender struct{ c *http.Client }

func from(localIP string) sender {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}, Timeout: 5 * time.Second}
	return sender{&http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 4}}}
}

// answer is a receiver's reply; status 0 and err when there was none.
type answer struct {
	status     int
	retryAfter string
	body       map[string]any
	err        error
}

func (s sender) post(t *testing.T, url string, header http.Header, body []byte) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &a.body)
	return a
}

func genericBody(repo string) []byte {
	return []byte(fmt.Sprintf(`{"repository": %q, "ref": "refs/heads/main"}`, repo))
}

func signedGeneric(token string, body []byte) http.Header {
	return http.Header{webhook.GenericSignatureHeader: {webhook.Sign([]byte(token), body)}}
}

// An unsigned or wrongly signed delivery makes the real operator send nothing to the
// real API server: the webhook Secret comes from a watch on it alone. Rotating and
// deleting the Secret reach the receiver through that watch.
func TestUnsignedDeliveriesCostNoAPIRequest(t *testing.T) {
	webhookSecret(t, "token-1")
	proxy, kubeconfig := startAPIProxy(t)
	// No limit: every delivery reaches the signature check.
	op := startOperator(t, kubeconfig, testNamespace(t, "webhook-cost"), "--webhook-refused-burst=0")
	url := op.webhook + "/hook/generic"
	body := genericBody("https://git.internal.example/fleet.git")
	local := from("127.0.0.1")

	eventually(t, "the receiver to verify with the Secret", func() (bool, string) {
		a := local.post(t, url, signedGeneric("token-1", body), body)
		return a.status == http.StatusAccepted, fmt.Sprint(a)
	})
	before := len(proxy.requests())
	for i := range 1000 {
		hdr := http.Header{}
		if i%2 == 1 {
			hdr = signedGeneric("a guess", body)
		}
		if a := local.post(t, url, hdr, body); a.status != http.StatusUnauthorized {
			t.Fatalf("delivery %d: %v, want 401", i, a)
		}
	}
	if during := proxy.requests()[before:]; len(during) != 0 {
		t.Fatalf("1000 unsigned deliveries made %d API requests:\n%s", len(during), strings.Join(during, "\n"))
	}

	// In its own namespace the operator reads its CA (and creates it on the first
	// start) and watches the webhook Secret by name: it never GETs that one, and
	// never lists or watches the namespace's other Secrets.
	home := "/api/v1/namespaces/" + harness.OperatorNamespace + "/secrets"
	var watched bool
	for _, r := range proxy.requests() {
		method, uri, _ := strings.Cut(r, " ")
		switch {
		case !strings.HasPrefix(uri, home) && !strings.HasPrefix(uri, "/api/v1/secrets"):
		case uri == home+"/nio-ca" && method == http.MethodGet, uri == home && method == http.MethodPost:
		case strings.HasPrefix(uri, home+"?") && method == http.MethodGet && strings.Contains(uri, "fieldSelector=metadata.name%3Dnio-webhook"):
			watched = true
			t.Logf("the webhook Secret's cache: %s", r)
		default:
			t.Errorf("a request for the operator's Secrets other than its CA and the webhook Secret's list and watch: %s", r)
		}
	}
	if !watched {
		t.Error("the webhook Secret was never listed or watched by name")
	}

	// Rotation: the new token holds once the watch delivered it, the old one no more.
	s := &corev1.Secret{}
	if err := cp.Admin.Get(context.Background(), client.ObjectKey{Namespace: harness.OperatorNamespace, Name: "nio-webhook"}, s); err != nil {
		t.Fatal(err)
	}
	s.Data["token"] = []byte("token-2")
	if err := cp.Admin.Update(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rotated token", func() (bool, string) {
		a := local.post(t, url, signedGeneric("token-2", body), body)
		return a.status == http.StatusAccepted, fmt.Sprint(a)
	})
	if a := local.post(t, url, signedGeneric("token-1", body), body); a.status != http.StatusUnauthorized {
		t.Errorf("the old token after rotation: %v, want 401", a)
	}

	// A deleted Secret: 503, still without asking the API server.
	if err := cp.Admin.Delete(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "503 without the Secret", func() (bool, string) {
		a := local.post(t, url, signedGeneric("token-2", body), body)
		return a.status == http.StatusServiceUnavailable, fmt.Sprint(a)
	})
	before = len(proxy.requests())
	for range 200 {
		if a := local.post(t, url, nil, body); a.status != http.StatusServiceUnavailable {
			t.Fatalf("without the Secret: %v, want 503", a)
		}
	}
	if during := proxy.requests()[before:]; len(during) != 0 {
		t.Fatalf("200 deliveries without a Secret made %d API requests:\n%s", len(during), strings.Join(during, "\n"))
	}
	// The 1000, the old token, and the rotated one tried before its watch event.
	if n := op.metric(t, `nio_webhook_rejected_total{provider="generic",reason="signature"}`); n < 1001 {
		t.Errorf("rejected{signature} = %v, want at least 1001", n)
	}
	if n := op.metric(t, `nio_webhook_rejected_total{provider="generic",reason="secret"}`); n < 201 {
		t.Errorf("rejected{secret} = %v, want at least 201", n)
	}
}

// Past --webhook-refused-burst a source is answered 429 with Retry-After; other
// sources, valid deliveries and, behind a trusted proxy, other clients are not.
func TestRefusedDeliveriesAreThrottledPerSource(t *testing.T) {
	webhookSecret(t, "token")
	_, kubeconfig := startAPIProxy(t)
	op := startOperator(t, kubeconfig, testNamespace(t, "webhook-limit"),
		"--webhook-refused-burst=3", "--webhook-refused-interval=1h", "--webhook-trusted-proxies=127.0.0.4/32")
	url := op.webhook + "/hook/generic"
	body := genericBody("https://git.internal.example/fleet.git")
	signed := signedGeneric("token", body)
	attacker, forge, proxy := from("127.0.0.2"), from("127.0.0.3"), from("127.0.0.4")
	xff := func(ip string) http.Header { return http.Header{"X-Forwarded-For": {ip}} }

	eventually(t, "the receiver", func() (bool, string) {
		a := forge.post(t, url, signed, body)
		return a.status == http.StatusAccepted, fmt.Sprint(a)
	})
	for i := range 3 {
		if a := attacker.post(t, url, nil, body); a.status != http.StatusUnauthorized {
			t.Fatalf("refusal %d: %v, want 401", i+1, a)
		}
	}
	a := attacker.post(t, url, nil, body)
	if a.status != http.StatusTooManyRequests || a.body["reason"] != "throttled" {
		t.Fatalf("the 4th refused delivery: %v, want 429 throttled", a)
	}
	if s, err := strconv.Atoi(a.retryAfter); err != nil || s < 3500 || s > 3600 {
		t.Errorf("Retry-After %q, want about an hour", a.retryAfter)
	}
	// X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
	if a := attacker.post(t, url, xff("198.51.100.9"), body); a.status != http.StatusTooManyRequests {
		t.Errorf("a spoofed X-Forwarded-For: %v, want 429", a)
	}
	if a := attacker.post(t, url, signed, body); a.status != http.StatusAccepted {
		t.Errorf("a valid delivery from the throttled address: %v, want 202", a)
	}
	if a := forge.post(t, url, nil, body); a.status != http.StatusUnauthorized {
		t.Errorf("another address: %v, want 401", a)
	}

	// Behind the trusted proxy, each client has its own limit.
	for range 3 {
		proxy.post(t, url, xff("203.0.113.7"), body)
	}
	if a := proxy.post(t, url, xff("203.0.113.7"), body); a.status != http.StatusTooManyRequests {
		t.Errorf("a client behind the proxy past its burst: %v, want 429", a)
	}
	if a := proxy.post(t, url, xff("198.51.100.1"), body); a.status != http.StatusUnauthorized {
		t.Errorf("another client behind the proxy: %v, want 401", a)
	}

	if n := op.metric(t, `nio_webhook_rejected_total{provider="generic",reason="throttled"}`); n != 3 {
		t.Errorf("rejected{throttled} = %v, want 3", n)
	}
	if n := op.metric(t, `nio_webhook_rejected_total{provider="generic",reason="signature"}`); n != 8 {
		t.Errorf("rejected{signature} = %v, want 8", n)
	}
	for _, src := range []string{`"source":"127.0.0.2"`, `"source":"203.0.113.7"`} {
		if n := op.logLines(t, "source throttled", src); n != 1 {
			t.Errorf("%d throttle lines for %s, want 1", n, src)
		}
	}
}

// A replayed push — the same delivery ID, or the same signed GitHub body under a
// fresh ID — triggers nothing; a new push does.
func TestReplayedDeliveryTriggersNothing(t *testing.T) {
	webhookSecret(t, "token")
	_, kubeconfig := startAPIProxy(t)
	ns := testNamespace(t, "webhook-replay")
	// A repository that fails at once: the passes the trigger starts are not the point.
	const repo = "file:///nonexistent/fleet.git"
	conf := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fleet"},
		Spec: nio.NixosConfigurationSpec{Flake: ".#worker", MachineRef: nio.LocalObjectReference{Name: "worker-01"},
			ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: repo}}}
	if err := cp.Admin.Create(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	op := startOperator(t, kubeconfig, ns)
	url := op.webhook + "/hook/github"
	push := func(after string) []byte {
		return []byte(fmt.Sprintf(`{"ref": "refs/heads/main", "after": %q, "repository": {"clone_url": %q}, "pushed_at": %d}`,
			after, repo, time.Now().UnixNano()))
	}
	deliver := func(id string, body []byte) answer {
		return from("127.0.0.1").post(t, url, http.Header{"X-GitHub-Event": {"push"}, "X-GitHub-Delivery": {id},
			"X-Hub-Signature-256": {webhook.Sign([]byte("token"), body)}}, body)
	}

	first := push("c0ffee")
	eventually(t, "the push to trigger the configuration", func() (bool, string) {
		a := deliver("delivery-1", first)
		if a.status == http.StatusOK && a.body["result"] == "duplicate" {
			t.Fatalf("the first delivery was a duplicate: %v", a)
		}
		return a.status == http.StatusAccepted && a.body["configurations"] == 1.0, fmt.Sprint(a)
	})
	for _, c := range []struct {
		name, id string
	}{{"the same delivery again", "delivery-1"}, {"the same body under a fresh ID", "delivery-2"}} {
		if a := deliver(c.id, first); a.status != http.StatusOK || a.body["result"] != "duplicate" {
			t.Errorf("%s: %v, want 200 duplicate", c.name, a)
		}
	}
	if a := deliver("delivery-3", push("beef")); a.status != http.StatusAccepted || a.body["configurations"] != 1.0 {
		t.Errorf("a new push: %v, want 202 with 1 configuration", a)
	}

	if n := op.metric(t, `nio_webhook_triggered_configurations_total{provider="github"}`); n != 2 {
		t.Errorf("triggered configurations = %v, want 2 (the replays triggered)", n)
	}
	if n := op.metric(t, `nio_webhook_rejected_total{provider="github",reason="replay"}`); n != 2 {
		t.Errorf("rejected{replay} = %v, want 2", n)
	}
	if n := op.logLines(t, "push received"); n != 2 {
		t.Errorf("%d \"push received\" lines, want 2", n)
	}
	if n := op.logLines(t, "replayed delivery ignored"); n != 2 {
		t.Errorf("%d \"replayed delivery ignored\" lines, want 2", n)
	}
}
