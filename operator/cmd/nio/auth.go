package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"k8s.io/client-go/rest"
)

// errNoToken: the kubeconfig's user authenticates without a bearer token.
var errNoToken = errors.New(`your kubeconfig's user has no bearer token (a client certificate?): the log endpoint checks a token with a TokenReview; use a context with a token (an OIDC login, or "kubectl create token")`)

// bearerToken is the token the kubeconfig's user sends to the API server, whichever
// way the kubeconfig supplies it (inline, a file, an exec or auth provider): a
// request goes through client-go's authentication, and the innermost transport
// reads the header instead of sending it anywhere.
func (g *globals) bearerToken(ctx context.Context) (string, error) {
	cfg := rest.CopyConfig(g.cfg)
	var token string
	cfg.WrapTransport = func(http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
				token = strings.TrimSpace(v)
			}
			return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader("{}")), Header: http.Header{}, Request: r}, nil
		})
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return "", fmt.Errorf("kubeconfig credentials: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(cfg.Host, "/")+"/version", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("kubeconfig credentials: %w", err)
	}
	resp.Body.Close()
	if token == "" {
		return "", &codeError{code: exitForbidden, err: errNoToken}
	}
	return token, nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// restHTTPClient reaches the API server as the kubeconfig's user, without a
// timeout: a follow lasts as long as the operation.
func restHTTPClient(cfg *rest.Config) (*http.Client, error) {
	c := rest.CopyConfig(cfg)
	c.Timeout = 0
	return rest.HTTPClientFor(c)
}
