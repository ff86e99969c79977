package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/homystack/nio/operator/internal/logserver"
)

// logService is the operator's Service in front of its log endpoint, as the API
// server's service proxy names it: <scheme>:<service>:<port name>.
const logService = "https:nio-operator-logs:logs"

func newLogs(g *globals) *cobra.Command {
	var follow, previous bool
	cmd := &cobra.Command{
		Use:   "logs <configuration|machine>",
		Short: "The output of the running or last operation of a configuration",
		Long: `logs prints the whole output (redacted as in events) of the running or last
operation of a NixosConfiguration, or of the configuration a Machine runs, each line
prefixed by its phase. -f follows it live to its end; --previous shows the operation
before. The operator keeps the last 4 MiB of each, since it started.

The log is read from the operator, authorised by the API server: your token must be
allowed to get that NixosConfiguration. In a cluster it is reached through the API
server's service proxy (Service nio-operator-logs); --operator-url reaches it
directly (the operator running as a process).

With -f, the exit code says how the operation ended: 0 succeeded, 5 it did not.`,
		Example: `  nio logs -f worker-config
  nio logs machine/worker-01 --previous
  NIO_OPERATOR_URL=https://127.0.0.1:9444 NIO_OPERATOR_CA=ca.crt nio logs -f worker-config`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeFirst(kindConfiguration, kindMachine),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd.Context())
			name, err := resolveConfiguration(ctx, c, ns, args[0])
			cancel()
			if err != nil {
				return err
			}
			body, err := g.openLog(cmd.Context(), ns, name, follow, previous)
			if err != nil {
				return err
			}
			defer body.Close()
			return printLog(g.out, body, g.colour(), follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "Follow the operation's output until it ends.")
	cmd.Flags().BoolVar(&previous, "previous", false, "The operation before the current one.")
	return cmd
}

// openLog asks the log endpoint for the log of configuration ns/name.
func (g *globals) openLog(ctx context.Context, ns, name string, follow, previous bool) (io.ReadCloser, error) {
	token, err := g.bearerToken(ctx)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	if follow {
		q.Set("follow", "1")
	}
	if previous {
		q.Set("previous", "1")
	}
	path := "/logs/" + url.PathEscape(ns) + "/" + url.PathEscape(name)
	var hc *http.Client
	var u string
	var via string
	direct := false
	if base := firstOf(g.operatorURL, g.getenv("NIO_OPERATOR_URL")); base != "" {
		if hc, err = g.directClient(); err != nil {
			return nil, err
		}
		u, via, direct = strings.TrimRight(base, "/")+path, base, true
	} else {
		if hc, err = restHTTPClient(g.cfg); err != nil {
			return nil, err
		}
		u = strings.TrimRight(g.cfg.Host, "/") + "/api/v1/namespaces/" + url.PathEscape(g.operatorNamespace) + "/services/" + logService + "/proxy" + path
		via = "the API server's proxy to service " + g.operatorNamespace + "/nio-operator-logs"
	}
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	// Through the service proxy the API server takes Authorization for itself; the
	// log endpoint reads the token from its own header.
	req.Header.Set(logserver.TokenHeader, token)
	if direct {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("log endpoint (%s): %w", via, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp.Body, nil
	}
	defer resp.Body.Close()
	msg := readMessage(resp.Body)
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, withCode(exitForbidden, "log of %s/%s refused: %s", ns, name, msg)
	case http.StatusNotFound:
		return nil, withCode(exitNotFound, "log of %s/%s: %s", ns, name, msg)
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		return nil, fmt.Errorf("log endpoint unavailable via %s (is the operator running, with --log-bind-address?): %s", via, msg)
	}
	return nil, fmt.Errorf("log endpoint via %s: %s: %s", via, resp.Status, msg)
}

// readMessage is an error answer's text: the log endpoint's plain text, or the
// message of the API server's Status.
func readMessage(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 8<<10))
	var st struct {
		Kind, Message string
	}
	if json.Unmarshal(b, &st) == nil && st.Kind == "Status" && st.Message != "" {
		return st.Message
	}
	return strings.TrimSpace(string(b))
}

// directClient reaches --operator-url, verifying its certificate against
// --operator-ca (else the system's roots).
func (g *globals) directClient() (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if f := firstOf(g.operatorCA, g.getenv("NIO_OPERATOR_CA")); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--operator-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--operator-ca %s: no PEM certificate", f)
		}
		tc.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	tr.ResponseHeaderTimeout = g.timeout
	return &http.Client{Transport: tr}, nil
}

// printLog writes the endpoint's answer for a person. It returns an error with
// exitFailed when the operation ended without success, and, when following, an
// error when the answer ended before the operation did.
func printLog(w io.Writer, r io.Reader, colour bool, follow bool) error {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	paint := func(c, s string) string {
		if colour && c != "" {
			return c + s + colourReset
		}
		return s
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	var end *logserver.Message
	for sc.Scan() {
		var m logserver.Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return fmt.Errorf("log endpoint sent something else than a log: %w", err)
		}
		switch {
		case m.Operation != nil:
			op := m.Operation
			fmt.Fprintln(bw, paint(colourDim, fmt.Sprintf("== operation %s: %s of %s, started %s", op.ID, dash(op.Action), dash(short(op.Commit)), op.StartTime.Local().Format(time.DateTime))))
		case m.Gap > 0:
			fmt.Fprintln(bw, paint(colourYellow, fmt.Sprintf("… %d lines not kept (the operator keeps the last 4 MiB of an operation)", m.Gap)))
		case m.Entry != nil:
			e := m.Entry
			if e.PhaseStart {
				line := "== " + e.Phase
				if e.Line != "" {
					line += ": " + e.Line
				}
				fmt.Fprintln(bw, paint(colourDim, line))
				break
			}
			fmt.Fprintln(bw, paint(colourDim, "["+dash(e.Phase)+"]")+" "+e.Line)
		case m.End != nil:
			end = &m
			line := "== " + m.End.Outcome
			if m.End.Message != "" {
				line += ": " + m.End.Message
			}
			c := colourRed
			if m.End.Outcome == "Succeeded" {
				c = colourGreen
			}
			fmt.Fprintln(bw, paint(c, line))
		}
		if follow {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the log: %w", err)
	}
	if end != nil && end.End.Outcome != "Succeeded" {
		return withCode(exitFailed, "operation %s ended %s", end.End.ID, end.End.Outcome)
	}
	if follow && end == nil {
		return fmt.Errorf("the log ended before the operation did (the operator restarted or lost leadership?)")
	}
	return nil
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
