package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
)

const (
	// maxBody is how much of a response body is read (and discarded) before the
	// connection is closed.
	maxBody = 64 << 10
	// maxRedirects bounds the same-host redirects followed.
	maxRedirects = 5
)

// checkHTTP runs one attempt of an HTTP check: a GET bounded by ctx (the overall
// deadline), on a fresh connection, through no proxy.
func (c *Checker) checkHTTP(ctx context.Context, h *HTTPCheck) (bool, string) {
	u, err := parseURL(h.URL)
	if err != nil {
		return false, err.Error()
	}
	shown := u.Redacted()
	dialer := &net.Dialer{}
	if !h.AllowRemote {
		// Validate judged the URL's host; this holds the connection to it, whatever
		// "localhost" resolves to at the time.
		literal, _ := netip.ParseAddr(u.Hostname())
		dialer.Control = dialGuard(literal)
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:      true,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	defer tr.CloseIdleConnections()
	var notFollowed string
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if hostKey(req.URL) != hostKey(via[0].URL) {
				notFollowed = req.URL.Host
				return http.ErrUseLastResponse
			}
			if len(via) > maxRedirects {
				return fmt.Errorf("more than %d redirects", maxRedirects)
			}
			return nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, fmt.Sprintf("GET %s: %v", shown, err)
	}
	req.Header.Set("User-Agent", "nio-agent-health-check")
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return false, fmt.Sprintf("GET %s: no response before the deadline", shown)
		}
		return false, fmt.Sprintf("GET %s: %v", shown, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	resp.Body.Close()
	want := h.expectStatus()
	if resp.StatusCode != want {
		msg := fmt.Sprintf("GET %s: status %s, want %d", shown, resp.Status, want)
		if notFollowed != "" {
			msg += fmt.Sprintf(" (the redirect to %s was not followed: another host)", notFollowed)
		}
		return false, msg
	}
	return true, fmt.Sprintf("GET %s: status %s", shown, resp.Status)
}

// hostKey is a URL's host and port, with the scheme's default port made explicit, so
// http://localhost/ and http://localhost:80/ are one host.
func hostKey(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// dialGuard refuses connections to anything but loopback addresses and literal (the
// URL's own IP address, when it has one).
func dialGuard(literal netip.Addr) func(network, address string, _ syscall.RawConn) error {
	literal = literal.Unmap().WithZone("")
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("refusing to connect to %s: %w", address, err)
		}
		ip := ap.Addr().Unmap().WithZone("")
		if ip.IsLoopback() || (literal.IsValid() && ip == literal) {
			return nil
		}
		return fmt.Errorf("refusing to connect to %s: not a loopback address, and allowRemote is off", ip)
	}
}
