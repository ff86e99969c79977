// Package webhook receives push notifications from Git forges and triggers, at once,
// the NixosConfigurations of the pushed repository, so that a push reaches hosts
// without waiting for a poll interval.
//
// The Receiver is an http.Handler the operator serves on a port of its own (off by
// default). Each forge posts to its own path, because forges copy each other's
// headers (Gitea and Forgejo also send X-GitHub-Event) and the path says which
// signature to check without guessing:
//
//	POST /hook/github   X-GitHub-Event: push,  X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>
//	POST /hook/gitlab   X-Gitlab-Event: Push Hook | Tag Push Hook,  X-Gitlab-Token: <secret>
//	POST /hook/gitea    X-Gitea-Event: push,   X-Gitea-Signature: <hex HMAC-SHA256 of the body>
//	POST /hook/forgejo  X-Forgejo-Event: push, X-Forgejo-Signature: <hex HMAC-SHA256 of the body>
//	POST /hook/generic  X-NIO-Signature-256: sha256=<hex HMAC>, body {"repository": "<url>", "ref": "...", "after": "..."}
//
// One shared secret, read through a SecretSource on every delivery, is the HMAC key
// or the GitLab token of all of them. Answers:
//
//	202 push verified, Trigger called: {"result":"triggered","configurations":N}
//	    (N: the objects queued — NixosConfigurations following their ref, and
//	    NixosFleets, each once for all its Machines)
//	200 verified event that is not a push (GitHub ping, issues...): nothing triggered
//	200 verified push seen before (a replay): {"result":"duplicate"}, nothing triggered
//	400 verified, but the payload is not a push NIO can read
//	401 signature or token missing or wrong: nothing triggered
//	404 unknown path; 405 not a POST; 413 body over the limit (1 MiB by default)
//	429 the source sent too many refused deliveries: Retry-After says when to try again
//	500 the Trigger failed (the forge may redeliver); 503 the secret is unreadable or empty
//
// Nothing is parsed before the signature holds. The secret and the signatures are
// never logged; repository URLs are logged in their normalised, credential-free form.
//
// Abuse: an unauthenticated delivery (405, 413, 401, 503) or a replay costs its
// source one token of a bucket of Options.RefusedBurst, refilled one per
// Options.RefusedInterval (limit.go). A source with none left is answered 429
// instead — at once, unread, when it sends no signature; after the check when it
// sends one, so a valid delivery is never refused for its address (a forge behind
// the same proxy as an attacker). Deliveries seen within Options.ReplayWindow, by the
// forge's delivery ID or (GitHub, Gitea, Forgejo) by their signed body, trigger
// nothing (replay.go).
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// PathPrefix is the path under which the Receiver serves /hook/<provider>.
const PathPrefix = "/hook/"

// DefaultMaxBodyBytes caps a delivery body. A GitHub or GitLab push lists at most
// 20 commits and weighs tens of KiB.
const DefaultMaxBodyBytes int64 = 1 << 20

// DefaultTriggerTimeout bounds one Trigger call.
const DefaultTriggerTimeout = 10 * time.Second

// SecretSource returns the shared secret: the HMAC key of GitHub, Gitea, Forgejo and
// generic deliveries, and the GitLab token. It is called once per delivery, so a
// rotated Secret takes effect at the next one; back it with a cached read (an
// unsigned delivery must cost no API request). A trailing newline (as `kubectl
// create secret --from-file` keeps) is ignored.
type SecretSource func(ctx context.Context) ([]byte, error)

// Trigger is called for each verified push with every URL form of the pushed
// repository that the payload carries. It makes the NixosConfigurations and
// NixosFleets whose gitRepo names that repository (NewRepoSet(repoURLs).Contains(gitRepo))
// reconcile now, and returns how many it triggered (a fleet's own configurations are
// reached through their fleet, and not counted). The URLs come from the payload
// and may carry credentials (a CI job's clone URL): log NewRepoSet(repoURLs).Keys(),
// never the URLs themselves.
type Trigger func(ctx context.Context, repoURLs []string) (triggered int, err error)

// Options configure a Receiver. Secret and Trigger are required.
type Options struct {
	Secret  SecretSource
	Trigger Trigger
	// MaxBodyBytes caps a delivery body; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// TriggerTimeout bounds one Trigger call; 0 means DefaultTriggerTimeout. The
	// call is not cancelled when the forge hangs up, so a push is not half-handled.
	TriggerTimeout time.Duration
	// RefusedBurst is how many unauthenticated deliveries (and replays) one source
	// may send in a row before it is answered 429; it earns one back per
	// RefusedInterval. 0 sets no limit (nio-operator's flags default to
	// DefaultRefusedBurst and DefaultRefusedInterval).
	RefusedBurst    int
	RefusedInterval time.Duration
	// MaxSources bounds the table of sources; 0 means DefaultMaxSources.
	MaxSources int
	// TrustedProxies are the reverse proxies (an Ingress) whose X-Forwarded-For
	// names the source of a delivery. A delivery from any other peer is that peer's,
	// whatever its X-Forwarded-For says.
	TrustedProxies []netip.Prefix
	// ReplayWindow is how long a handled push is remembered (by delivery ID, and by
	// body where it is signed and unique); 0 remembers none. MaxDeliveries bounds
	// how many; 0 means DefaultMaxDeliveries.
	ReplayWindow  time.Duration
	MaxDeliveries int
	// Registerer receives the nio_webhook_* counters; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives one line per push and per refused delivery (none while its
	// source is answered 429); the zero Logger discards.
	Logger logr.Logger
}

// Receiver is the http.Handler of the push webhooks; safe for concurrent use.
type Receiver struct {
	opts       Options
	metrics    *metrics
	limiter    *limiter    // nil: no limit
	deliveries *deliveries // nil: replays are not detected
	now        func() time.Time
	// secretToldAt is when an unusable secret was last logged (Unix ns; 0: it
	// worked since): a broken Secret is one line a minute, not one per delivery.
	secretToldAt atomic.Int64
}

// secretLogInterval is how often an unusable secret is logged while it stays so.
const secretLogInterval = time.Minute

// NewReceiver checks opts and registers the metrics.
func NewReceiver(opts Options) (*Receiver, error) {
	if opts.Secret == nil || opts.Trigger == nil {
		return nil, errors.New("webhook receiver needs a secret source and a trigger")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.TriggerTimeout <= 0 {
		opts.TriggerTimeout = DefaultTriggerTimeout
	}
	if opts.RefusedBurst < 0 || (opts.RefusedBurst > 0 && opts.RefusedInterval <= 0) {
		return nil, errors.New("webhook receiver: the refused-delivery burst must be 0 (no limit) or positive, with a positive interval")
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	rc := &Receiver{opts: opts, metrics: m, now: time.Now}
	if opts.RefusedBurst > 0 {
		rc.limiter = newLimiter(opts.RefusedBurst, opts.RefusedInterval, opts.MaxSources)
	}
	if opts.ReplayWindow > 0 {
		rc.deliveries = newDeliveries(opts.ReplayWindow, opts.MaxDeliveries)
	}
	return rc, nil
}

// reply is one answer: its status, JSON body and, for a refusal, the reason and
// the log line, written once the limit has had its say.
type reply struct {
	status int
	body   map[string]any
	reason string // a Reason* constant; empty: not refused
	// retryAfter, on a 429, is how long until the source may be refused again.
	retryAfter time.Duration
	logMsg     string // empty: nothing to log
	logErr     error  // logged at error level when set
	logKV      []any
}

// charged: the refusals that cost their source a token, because nothing proves the
// sender knows the secret (or because it sends what was handled already).
func charged(reason string) bool {
	switch reason {
	case ReasonMethod, ReasonSize, ReasonSecret, ReasonSignature, ReasonReplay:
		return true
	}
	return false
}

// ServeHTTP handles POST /hook/<provider>.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, found := strings.CutPrefix(r.URL.Path, PathPrefix)
	p, ok := providers[name]
	if !found || !ok {
		http.NotFound(w, r)
		return
	}
	rc.metrics.received.WithLabelValues(p.name).Inc()
	src := sourceOf(r, rc.opts.TrustedProxies)
	log := rc.opts.Logger.WithValues("provider", p.name, "source", src.String())
	if id := r.Header.Get(p.deliveryHeader); id != "" {
		// Logged before verification, so bounded: forges send a UUID.
		log = log.WithValues("delivery", id[:min(len(id), 64)])
	}

	rc.write(w, p, log, rc.limit(w, r, p, src, log))
}

// limit answers a source over its limit 429, and serves the others.
func (rc *Receiver) limit(w http.ResponseWriter, r *http.Request, p *provider, src netip.Addr, log logr.Logger) reply {
	if rc.limiter == nil {
		return rc.serve(w, r, p, log)
	}
	key := sourceKey(src)
	blocked, first, retry := rc.limiter.blocked(key, rc.now())
	if !blocked || r.Header.Get(p.authHeader) != "" {
		rep := rc.serve(w, r, p, log)
		if !charged(rep.reason) {
			return rep
		}
		ok, firstCharged, wait := rc.limiter.charge(key, rc.now())
		if ok {
			return rep
		}
		first, retry = first || firstCharged, wait
	} // else nothing could prove it genuine: not even its body is read.
	if first {
		log.Info("source throttled: too many refused deliveries; answering 429", "retryAfter", retry.Round(time.Second).String())
	}
	return throttled(retry)
}

func (rc *Receiver) write(w http.ResponseWriter, p *provider, log logr.Logger, rep reply) {
	if rep.reason != "" {
		rc.metrics.rejected.WithLabelValues(p.name, rep.reason).Inc()
	}
	switch {
	case rep.logMsg == "":
	case rep.logErr != nil:
		log.Error(rep.logErr, rep.logMsg, rep.logKV...)
	default:
		log.Info(rep.logMsg, rep.logKV...)
	}
	if rep.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(rep.retryAfter)))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_ = json.NewEncoder(w).Encode(rep.body)
}

func throttled(retry time.Duration) reply {
	s := retrySeconds(retry)
	return reply{status: http.StatusTooManyRequests, reason: ReasonThrottled, retryAfter: retry, body: map[string]any{
		"result": "rejected", "reason": ReasonThrottled,
		"message": fmt.Sprintf("too many refused deliveries from this address; retry in %d s", s),
	}}
}

// retrySeconds is a Retry-After value: whole seconds, at least 1.
func retrySeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

func (rc *Receiver) serve(w http.ResponseWriter, r *http.Request, p *provider, log logr.Logger) reply {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return reject(ReasonMethod, http.StatusMethodNotAllowed, "only POST is accepted")
	}
	body, err := rc.readBody(w, r)
	if err != nil {
		if tooLarge := new(http.MaxBytesError); errors.As(err, &tooLarge) {
			return reject(ReasonSize, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("body exceeds %d bytes", tooLarge.Limit)).
				logged("delivery refused: body too large", nil, "limit", tooLarge.Limit)
		}
		return reject(ReasonPayload, http.StatusBadRequest, "could not read the body")
	}

	secret, err := rc.opts.Secret(r.Context())
	if err != nil {
		return rc.secretUnusable(reject(ReasonSecret, http.StatusServiceUnavailable, "shared secret unavailable").
			logged("read webhook secret", err))
	}
	secret = bytes.TrimRight(secret, "\r\n")
	if len(secret) == 0 {
		// With an empty key anyone can compute a valid signature.
		return rc.secretUnusable(reject(ReasonSecret, http.StatusServiceUnavailable, "shared secret unavailable").
			logged("webhook secret is empty: every delivery is refused", nil))
	}
	rc.secretToldAt.Store(0)
	if err := p.verify(r.Header, body, secret); err != nil {
		return reject(ReasonSignature, http.StatusUnauthorized, err.Error()).
			logged("delivery refused", nil, "reason", err.Error(), "remote", r.RemoteAddr)
	}
	rc.metrics.verified.WithLabelValues(p.name).Inc()

	if p.eventHeader != "" {
		event := r.Header.Get(p.eventHeader)
		if event == "" {
			return reject(ReasonPayload, http.StatusBadRequest, "missing "+p.eventHeader)
		}
		if !slices.Contains(p.pushEvents, event) {
			log.V(1).Info("event ignored", "event", event)
			return reply{status: http.StatusOK, body: map[string]any{"result": "ignored", "event": event}}
		}
	}
	data, err := payloadJSON(p, r.Header.Get("Content-Type"), body)
	if err == nil {
		var ps push
		if ps, err = p.parse(data); err == nil {
			return rc.handlePush(r, p, log, ps, body)
		}
	}
	return reject(ReasonPayload, http.StatusBadRequest, err.Error()).
		logged("delivery refused: unreadable push payload", nil, "error", err.Error())
}

// handlePush triggers a verified push unless it was handled before.
func (rc *Receiver) handlePush(r *http.Request, p *provider, log logr.Logger, ps push, body []byte) reply {
	if rc.deliveries == nil {
		return rc.trigger(r.Context(), p, log, ps)
	}
	keys := deliveryKeys(p, r.Header, body)
	if !rc.deliveries.claim(keys, rc.now()) {
		return reply{status: http.StatusOK, reason: ReasonReplay, body: map[string]any{
			"result": "duplicate", "message": "this delivery was handled already; nothing triggered",
		}}.logged("replayed delivery ignored", nil, "ref", ps.ref, "after", ps.after)
	}
	rep := rc.trigger(r.Context(), p, log, ps)
	if rep.status == http.StatusInternalServerError {
		// Not handled: the forge's redelivery must run.
		rc.deliveries.release(keys)
	}
	return rep
}

func (rc *Receiver) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	// A declared length over the cap is refused before a byte is read.
	if r.ContentLength > rc.opts.MaxBodyBytes {
		return nil, &http.MaxBytesError{Limit: rc.opts.MaxBodyBytes}
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, rc.opts.MaxBodyBytes))
}

func (rc *Receiver) trigger(ctx context.Context, p *provider, log logr.Logger, ps push) reply {
	log = log.WithValues("repository", NewRepoSet(ps.urls).Keys(), "ref", ps.ref, "after", ps.after)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rc.opts.TriggerTimeout)
	defer cancel()
	n, err := rc.opts.Trigger(ctx, ps.urls)
	if n > 0 {
		rc.metrics.triggered.WithLabelValues(p.name).Add(float64(n))
	}
	if err != nil {
		rc.metrics.triggerErrors.WithLabelValues(p.name).Inc()
		log.Error(err, "trigger configurations", "triggered", n)
		return reply{status: http.StatusInternalServerError, body: map[string]any{
			"result": "error", "message": "triggering configurations failed; redeliver later",
		}}
	}
	log.Info("push received", "triggered", n)
	return reply{status: http.StatusAccepted, body: map[string]any{"result": "triggered", "configurations": n}}
}

// reject is a refusal; ServeHTTP counts it in nio_webhook_rejected_total.
func reject(reason string, status int, msg string) reply {
	return reply{status: status, reason: reason, body: map[string]any{"result": "rejected", "reason": reason, "message": msg}}
}

// secretUnusable keeps rep's log line only when the secret was not logged as
// unusable in the last secretLogInterval.
func (rc *Receiver) secretUnusable(rep reply) reply {
	now := rc.now().UnixNano()
	last := rc.secretToldAt.Load()
	if last != 0 && now-last < int64(secretLogInterval) || !rc.secretToldAt.CompareAndSwap(last, now) {
		rep.logMsg = ""
	}
	return rep
}

// logged adds the log line of a refusal, written unless its source is throttled.
func (rep reply) logged(msg string, err error, kv ...any) reply {
	rep.logMsg, rep.logErr, rep.logKV = msg, err, kv
	return rep
}
