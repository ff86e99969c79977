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
//	400 verified, but the payload is not a push NIO can read
//	401 signature or token missing or wrong: nothing triggered
//	404 unknown path; 405 not a POST; 413 body over the limit (1 MiB by default)
//	500 the Trigger failed (the forge may redeliver); 503 the secret is unreadable or empty
//
// Nothing is parsed before the signature holds. The secret and the signatures are
// never logged; repository URLs are logged in their normalised, credential-free form.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
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
// rotated Secret takes effect at the next one; back it with a cached read. A
// trailing newline (as `kubectl create secret --from-file` keeps) is ignored.
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
	// Registerer receives the nio_webhook_* counters; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives one line per push and per refused delivery; the zero Logger
	// discards.
	Logger logr.Logger
}

// Receiver is the http.Handler of the push webhooks; safe for concurrent use.
type Receiver struct {
	opts    Options
	metrics *metrics
}

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
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &Receiver{opts: opts, metrics: m}, nil
}

// reply is the status and JSON body of one answer.
type reply struct {
	status int
	body   map[string]any
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
	log := rc.opts.Logger.WithValues("provider", p.name)
	if id := r.Header.Get(p.deliveryHeader); id != "" {
		// Logged before verification, so bounded: forges send a UUID.
		log = log.WithValues("delivery", id[:min(len(id), 64)])
	}
	rep := rc.serve(w, r, p, log)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_ = json.NewEncoder(w).Encode(rep.body)
}

func (rc *Receiver) serve(w http.ResponseWriter, r *http.Request, p *provider, log logr.Logger) reply {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return rc.reject(p, ReasonMethod, http.StatusMethodNotAllowed, "only POST is accepted")
	}
	body, err := rc.readBody(w, r)
	if err != nil {
		if tooLarge := new(http.MaxBytesError); errors.As(err, &tooLarge) {
			log.Info("delivery refused: body too large", "limit", tooLarge.Limit)
			return rc.reject(p, ReasonSize, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("body exceeds %d bytes", tooLarge.Limit))
		}
		return rc.reject(p, ReasonPayload, http.StatusBadRequest, "could not read the body")
	}

	secret, err := rc.opts.Secret(r.Context())
	if err != nil {
		log.Error(err, "read webhook secret")
		return rc.reject(p, ReasonSecret, http.StatusServiceUnavailable, "shared secret unavailable")
	}
	secret = bytes.TrimRight(secret, "\r\n")
	if len(secret) == 0 {
		// With an empty key anyone can compute a valid signature.
		log.Info("webhook secret is empty: every delivery is refused")
		return rc.reject(p, ReasonSecret, http.StatusServiceUnavailable, "shared secret unavailable")
	}
	if err := p.verify(r.Header, body, secret); err != nil {
		log.Info("delivery refused", "reason", err.Error(), "remote", r.RemoteAddr)
		return rc.reject(p, ReasonSignature, http.StatusUnauthorized, err.Error())
	}
	rc.metrics.verified.WithLabelValues(p.name).Inc()

	if p.eventHeader != "" {
		event := r.Header.Get(p.eventHeader)
		if event == "" {
			return rc.reject(p, ReasonPayload, http.StatusBadRequest, "missing "+p.eventHeader)
		}
		if !slices.Contains(p.pushEvents, event) {
			log.V(1).Info("event ignored", "event", event)
			return reply{http.StatusOK, map[string]any{"result": "ignored", "event": event}}
		}
	}
	data, err := payloadJSON(p, r.Header.Get("Content-Type"), body)
	if err == nil {
		var ps push
		if ps, err = p.parse(data); err == nil {
			return rc.trigger(r.Context(), p, log, ps)
		}
	}
	log.Info("delivery refused: unreadable push payload", "error", err.Error())
	return rc.reject(p, ReasonPayload, http.StatusBadRequest, err.Error())
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
		return reply{http.StatusInternalServerError, map[string]any{
			"result": "error", "message": "triggering configurations failed; redeliver later",
		}}
	}
	log.Info("push received", "triggered", n)
	return reply{http.StatusAccepted, map[string]any{"result": "triggered", "configurations": n}}
}

func (rc *Receiver) reject(p *provider, reason string, status int, msg string) reply {
	rc.metrics.rejected.WithLabelValues(p.name, reason).Inc()
	return reply{status, map[string]any{"result": "rejected", "reason": reason, "message": msg}}
}
