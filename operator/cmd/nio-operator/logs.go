package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/homystack/nio/operator/internal/logserver"
	"github.com/homystack/nio/operator/internal/oplog"
	"github.com/homystack/nio/operator/internal/pki"
)

// logServiceName is the Service in front of the log endpoint (config/manager).
const logServiceName = "nio-operator-logs"

// logOptions shape the log endpoint of `nio logs`.
type logOptions struct {
	addr     string
	hosts    string
	maxBytes int
}

func bindLogFlags(fs *flag.FlagSet, o *logOptions) {
	fs.StringVar(&o.addr, "log-bind-address", "", "Address of the TLS endpoint `nio logs` reads operations' output from (empty: off; the Deployment sets :9444).")
	fs.StringVar(&o.hosts, "log-tls-hosts", "", "Comma-separated extra DNS names and IP addresses of the log endpoint's certificate (issued by the operator CA; it always names localhost, 127.0.0.1, ::1 and the Service "+logServiceName+").")
	fs.IntVar(&o.maxBytes, "log-buffer-bytes", oplog.DefaultMaxBytes, "Output kept per operation (its last bytes); the current and the previous operation of each configuration are kept, in memory.")
}

// logHosts are the names the log endpoint's certificate carries.
func logHosts(namespace, extra string) []string {
	svc := logServiceName + "." + namespace
	hosts := []string{"localhost", "127.0.0.1", "::1", logServiceName, svc, svc + ".svc", svc + ".svc.cluster.local"}
	for _, h := range strings.Split(extra, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// setupLogServer serves the kept logs over TLS, when enabled. It runs on the leader
// only: the leader drives the hosts, so it alone holds their output.
func setupLogServer(mgr ctrl.Manager, o options, issuer *pki.Issuer, store *oplog.Store) error {
	if o.logs.addr == "" {
		return nil
	}
	creds, err := issuer.LogServerCredentials(logHosts(o.namespace, o.logs.hosts))
	if err != nil {
		return fmt.Errorf("--log-tls-hosts: %w", err)
	}
	h := logserver.NewHandler(logserver.Options{
		Store:    store,
		Reviewer: logserver.KubeReviewer{Client: mgr.GetClient()},
		Logger:   mgr.GetLogger().WithName("logs"),
	})
	srv := &http.Server{
		Handler: h, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 64 << 10,
		// No WriteTimeout: a follow lasts as long as the operation.
		IdleTimeout: 2 * time.Minute,
		TLSConfig:   &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: creds.GetCertificate},
		ErrorLog:    stdlog.New(io.Discard, "", 0),
	}
	return mgr.Add(&logServer{addr: o.logs.addr, srv: srv})
}

// logServer listens once it is the leader (a replica that is not would hold the
// port and have nothing to say), and gives followers 5s at shutdown.
type logServer struct {
	addr string
	srv  *http.Server
}

func (s *logServer) NeedLeaderElection() bool { return true }

func (s *logServer) Start(ctx context.Context) error {
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("log endpoint: %w", err)
	}
	ctrl.Log.WithName("logs").Info("serving operation logs", "addr", l.Addr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if s.srv.Shutdown(sctx) != nil {
			_ = s.srv.Close()
		}
	}()
	if err := s.srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("log endpoint: %w", err)
	}
	<-done
	return nil
}
