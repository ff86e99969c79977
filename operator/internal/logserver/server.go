// Package logserver serves the operations' output kept by oplog to `nio logs`:
//
//	GET /logs/{namespace}/{configuration}[?follow=1][&previous=1]
//
// Every request is authenticated and authorised by the API server: the caller's
// bearer token goes through a TokenReview, and the user it names must be allowed to
// `get` that NixosConfiguration (a SubjectAccessReview). The token is read from
// X-Nio-Token, else from Authorization: Bearer — the API server's service proxy, the
// way `nio logs` reaches the operator in a cluster, authenticates the caller itself
// and strips Authorization before proxying, so the CLI repeats its token there.
//
// The answer is newline-delimited JSON (Message), one object per line, so a
// follower sees each line as it arrives and knows when the operation ended.
package logserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/homystack/nio/operator/internal/oplog"
)

// TokenHeader carries the caller's bearer token through the API server's service
// proxy.
const TokenHeader = "X-Nio-Token"

// Message is one line of the answer: exactly one field is set. Heartbeats ({}) keep
// an idle follow open through proxies.
type Message struct {
	// Operation opens the answer: which operation this is.
	Operation *oplog.Info `json:"operation,omitempty"`
	// Entry is a line of output or the start of a phase.
	Entry *oplog.Entry `json:"entry,omitempty"`
	// Gap counts lines lost between two entries (beyond the kept bytes).
	Gap uint64 `json:"gap,omitempty"`
	// End closes the answer of an operation that ended: its outcome.
	End *oplog.Info `json:"end,omitempty"`
}

// Options shape a Handler.
type Options struct {
	Store    *oplog.Store
	Reviewer Reviewer
	Logger   logr.Logger
	// MaxStreams bounds the requests served at once (default 64); more are answered 429.
	MaxStreams int
	// Heartbeat is the interval of {} lines on an idle follow (default 15s).
	Heartbeat time.Duration
	// ReviewTimeout bounds the TokenReview and SubjectAccessReview (default 10s).
	ReviewTimeout time.Duration
}

// Handler serves the logs.
type Handler struct {
	o     Options
	slots chan struct{}
	mux   *http.ServeMux
}

// NewHandler returns the log endpoint's handler.
func NewHandler(o Options) *Handler {
	if o.MaxStreams <= 0 {
		o.MaxStreams = 64
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	if o.ReviewTimeout <= 0 {
		o.ReviewTimeout = 10 * time.Second
	}
	h := &Handler{o: o, slots: make(chan struct{}, o.MaxStreams), mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /logs/{namespace}/{name}", h.serveLog)
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) serveLog(w http.ResponseWriter, r *http.Request) {
	key := types.NamespacedName{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
	if len(validation.IsDNS1123Label(key.Namespace)) > 0 || len(validation.IsDNS1123Subdomain(key.Name)) > 0 {
		httpError(w, http.StatusBadRequest, "not a namespace and NixosConfiguration name")
		return
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		w.Header().Set("Retry-After", "5")
		httpError(w, http.StatusTooManyRequests, "too many log streams at once; try again")
		return
	}
	token := bearerToken(r)
	if token == "" {
		httpError(w, http.StatusUnauthorized, "no bearer token: nio logs sends the token of your kubeconfig")
		return
	}
	user, status, msg := h.review(r.Context(), token, key)
	if status != http.StatusOK {
		httpError(w, status, msg)
		return
	}
	previous := flag(r, "previous")
	follow := flag(r, "follow") && !previous
	op := h.o.Store.Get(key, previous)
	if op == nil {
		which := "no operation"
		if previous {
			which = "no previous operation"
		}
		httpError(w, http.StatusNotFound, fmt.Sprintf("%s of NixosConfiguration %s is kept (the operator keeps the current and the previous one since it started)", which, key))
		return
	}
	h.o.Logger.V(1).Info("log read", "user", user.Name, "configuration", key.String(), "follow", follow, "previous", previous)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	stream(r.Context(), w, op, follow, h.o.Heartbeat)
}

// review returns the caller's user, or the status and message that refuse them.
func (h *Handler) review(ctx context.Context, token string, key types.NamespacedName) (User, int, string) {
	ctx, cancel := context.WithTimeout(ctx, h.o.ReviewTimeout)
	defer cancel()
	user, err := h.o.Reviewer.Authenticate(ctx, token)
	if errors.Is(err, ErrUnauthenticated) {
		return User{}, http.StatusUnauthorized, "the API server does not accept your token (expired? log in again)"
	}
	if err != nil {
		h.o.Logger.Error(err, "log read: authenticating the caller")
		return User{}, http.StatusServiceUnavailable, "cannot authenticate the caller with the API server now; try again"
	}
	ok, reason, err := h.o.Reviewer.MayRead(ctx, user, key.Namespace, key.Name)
	if err != nil {
		h.o.Logger.Error(err, "log read: authorising the caller", "user", user.Name)
		return User{}, http.StatusServiceUnavailable, "cannot authorise the caller with the API server now; try again"
	}
	if !ok {
		msg := fmt.Sprintf("%s may not get nixosconfigurations %q in namespace %q", quoteUser(user.Name), key.Name, key.Namespace)
		if reason != "" {
			msg += ": " + reason
		}
		h.o.Logger.Info("log read refused", "user", user.Name, "configuration", key.String())
		return User{}, http.StatusForbidden, msg
	}
	return user, http.StatusOK, ""
}

func quoteUser(name string) string { return fmt.Sprintf("user %q", name) }

// stream writes op's kept entries, then, when following, each new one until the
// operation ends or the caller goes.
func stream(ctx context.Context, w http.ResponseWriter, op *oplog.Operation, follow bool, heartbeat time.Duration) {
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	entries, info, changed := op.Read(0)
	if enc.Encode(Message{Operation: &info}) != nil {
		return
	}
	var last uint64
	if info.Dropped > 0 {
		_ = enc.Encode(Message{Gap: info.Dropped})
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		for i := range entries {
			e := &entries[i]
			if last > 0 && e.Seq > last+1 {
				if enc.Encode(Message{Gap: e.Seq - last - 1}) != nil {
					return
				}
			}
			if enc.Encode(Message{Entry: e}) != nil {
				return
			}
			last = e.Seq
		}
		if info.Ended || !follow {
			if info.Ended {
				_ = enc.Encode(Message{End: &info})
			}
			_ = rc.Flush()
			return
		}
		if rc.Flush() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if enc.Encode(Message{}) != nil || rc.Flush() != nil {
				return
			}
			continue
		case <-changed:
		}
		entries, info, changed = op.Read(last)
	}
}

// bearerToken is the caller's token: X-Nio-Token, else Authorization: Bearer.
func bearerToken(r *http.Request) string {
	if t := strings.TrimSpace(r.Header.Get(TokenHeader)); t != "" {
		return t
	}
	auth := r.Header.Get("Authorization")
	if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		return strings.TrimSpace(auth[7:])
	}
	return ""
}

func flag(r *http.Request, name string) bool {
	switch r.URL.Query().Get(name) {
	case "1", "true", "yes":
		return true
	}
	return false
}

func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, msg)
}
