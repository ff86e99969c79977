package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/api/identity"
	nio "github.com/homystack/nio/api/v1alpha1"
)

// AgentConfig says how to reach a Machine's nio-agent.
type AgentConfig struct {
	// Address is host:port of the agent (spec.ipAddress and spec.agent.port).
	Address string
	// Namespace and Name of the Machine: the agent's certificate must name
	// identity.MachineDNSName(Namespace, Name), so one host can't answer for another.
	Namespace, Name string
	// RootCAs is the operator CA; the system roots are never trusted.
	RootCAs *x509.CertPool
	// GetClientCertificate returns the operator's client certificate (the pki's
	// rotating source). It is asked on every handshake, so a renewed certificate is
	// used without rebuilding the transport.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// DialTimeout bounds connecting and the TLS handshake (default 10s).
	DialTimeout time.Duration
	// ProbeTimeout bounds Probe's Status call (default 3s).
	ProbeTimeout time.Duration
	// ReconnectTimeout is how long Apply keeps trying to re-attach to an operation
	// after its stream broke (default 2m); then it gives up with ErrOutcomeUnknown.
	ReconnectTimeout time.Duration
	// ChunkSize of source messages (default 256 KiB).
	ChunkSize int
	// Dialer opens the TCP connection (default net.Dialer). Tests use it to break
	// connections on purpose.
	Dialer func(ctx context.Context, address string) (net.Conn, error)
	// Pool, when set, lends one long-lived connection per Machine to every call but
	// Confirm, shared with the other Agents of the Machine built on the same pool.
	// Without it every call and Apply attempt dials its own connection.
	Pool *AgentPool
}

// DefaultAgentPort is where nio-agent listens unless spec.agent.port says otherwise.
const DefaultAgentPort = 9443

// AgentConfigFor fills an AgentConfig from a Machine, the operator CA and the
// operator's client certificate source.
func AgentConfigFor(m *nio.Machine, rootCAs *x509.CertPool, clientCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) AgentConfig {
	port := int(m.Spec.Agent.Port)
	if port == 0 {
		port = DefaultAgentPort
	}
	return AgentConfig{
		Address:              net.JoinHostPort(m.Spec.IPAddress, strconv.Itoa(port)),
		Namespace:            m.Namespace,
		Name:                 m.Name,
		RootCAs:              rootCAs,
		GetClientCertificate: clientCert,
	}
}

// Agent talks to nio-agent over mTLS gRPC.
type Agent struct {
	cfg AgentConfig
	tls *tls.Config
}

var _ Transport = (*Agent)(nil)

// NewAgent checks the configuration; it does not connect.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Address == "" || cfg.Namespace == "" || cfg.Name == "" {
		return nil, errors.New("agent transport: address, namespace and name are required")
	}
	if cfg.RootCAs == nil || cfg.GetClientCertificate == nil {
		return nil, errors.New("agent transport: the operator CA and a client certificate source are required")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 3 * time.Second
	}
	if cfg.ReconnectTimeout == 0 {
		cfg.ReconnectTimeout = 2 * time.Minute
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = 256 << 10
	}
	if cfg.Dialer == nil {
		d := &net.Dialer{}
		cfg.Dialer = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	a := &Agent{cfg: cfg, tls: &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              cfg.RootCAs,
		ServerName:           identity.MachineDNSName(cfg.Namespace, cfg.Name),
		GetClientCertificate: cfg.GetClientCertificate,
	}}
	return a, nil
}

// ServerName is the name the agent's certificate must carry.
func (a *Agent) ServerName() string { return a.tls.ServerName }

// poolKey names the connection of this Agent in its pool: another address or
// server name (the Machine's spec changed) is another connection.
func (a *Agent) poolKey() poolKey {
	return poolKey{
		machine: machineKey{namespace: a.cfg.Namespace, name: a.cfg.Name},
		address: a.cfg.Address, serverName: a.tls.ServerName,
	}
}

// agentConn is one gRPC client connection: a pooled one (AgentConfig.Pool) serves
// many calls, and one without a pool a single call or Apply attempt.
type agentConn struct {
	cc     *grpc.ClientConn
	client agentv1.AgentServiceClient
	// failure is why the latest attempt to connect failed.
	failure connectFailure
}

// connectFailure keeps the first error of an attempt to connect: the dial, the TLS
// handshake, or the agent closing the connection before its first bytes. It is
// cleared when a connection comes up. Later errors are the fallout of closing the
// connection ("use of closed network connection").
type connectFailure struct {
	mu  sync.Mutex
	err error
}

func (f *connectFailure) fail(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *connectFailure) clear() {
	f.mu.Lock()
	f.err = nil
	f.mu.Unlock()
}

func (f *connectFailure) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// connState records whether the agent ever answered over one TLS connection. The
// first bytes read after the TLS handshake prove the agent accepted our certificate
// too (in TLS 1.3 a refused client certificate shows only then). A call that went
// over no connection the agent answered never reached a handler: the host counts as
// unreachable.
type connState struct {
	up atomic.Bool
	cc *agentConn
}

func (s *connState) markUp() {
	s.up.Store(true)
	s.cc.failure.clear()
}

func (s *connState) fail(err error) {
	if !s.up.Load() {
		s.cc.failure.fail(err)
	}
}

func (a *Agent) dial() (*agentConn, error) {
	c := &agentConn{}
	tlsConfig := a.tls
	if a.cfg.Pool != nil {
		tlsConfig = a.tls.Clone()
		tlsConfig.ClientSessionCache = a.cfg.Pool.sessionCache()
	}
	creds := &trackingCreds{TransportCredentials: credentials.NewTLS(tlsConfig), cc: c, pool: a.cfg.Pool}
	cc, err := grpc.NewClient("passthrough:///"+a.cfg.Address,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
			defer cancel()
			conn, err := a.cfg.Dialer(ctx, addr)
			if err != nil {
				c.failure.fail(err)
			}
			return conn, err
		}),
		// Builds can be silent for minutes; pings notice a dead peer. The agent
		// permits pings every 10s, also without a call: a pooled connection idle
		// between probes is checked too, so the next call does not go out over a
		// connection to a host that is gone.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: a.cfg.Pool != nil}),
		grpc.WithConnectParams(grpcConnectParams(a.cfg.DialTimeout)),
		// The framer reads from the TLS connection, which buffers a record anyway:
		// without gRPC's own 32 KB read buffer an idle pooled connection weighs
		// about 40 KB instead of 105 KB (thousands are held). Writes are batched in
		// a buffer taken from a shared pool for each flush and given back after it:
		// a call's frames go out in one TLS record and one write(2), not one each,
		// and an idle connection holds no write buffer.
		grpc.WithReadBufferSize(0),
		grpc.WithSharedWriteBuffer(true),
	)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w: %w", a.cfg.Address, ErrUnreachable, err)
	}
	c.cc, c.client = cc, agentv1.NewAgentServiceClient(cc)
	return c, nil
}

// trackingCreds wraps the TLS credentials to track each connection: its state
// travels with the call as the peer's AuthInfo (trackedInfo).
type trackingCreds struct {
	credentials.TransportCredentials
	cc   *agentConn
	pool *AgentPool // nil: not pooled
}

func (c *trackingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.cc.failure.fail(err)
		return nil, nil, err
	}
	tlsInfo, ok := info.(credentials.TLSInfo)
	if !ok {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("agent transport: unexpected TLS handshake information %T", info)
	}
	c.pool.countHandshake(tlsInfo.State.DidResume)
	state := &connState{cc: c.cc}
	return &trackedConn{Conn: conn, state: state}, trackedInfo{TLSInfo: tlsInfo, state: state}, nil
}

func (c *trackingCreds) Clone() credentials.TransportCredentials {
	return &trackingCreds{TransportCredentials: c.TransportCredentials.Clone(), cc: c.cc, pool: c.pool}
}

// trackedInfo is the TLS information of a tracked connection, with its state.
type trackedInfo struct {
	credentials.TLSInfo
	state *connState
}

type trackedConn struct {
	net.Conn
	state *connState
	once  sync.Once
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(c.state.markUp)
	} else if err != nil {
		c.state.fail(afterHandshake(err))
	}
	return n, err
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.state.fail(afterHandshake(err))
	}
	return n, err
}

// afterHandshake explains a failure between our side of the TLS handshake and the
// agent's first bytes. In TLS 1.3 that is where a refused client certificate shows;
// the alert itself can be lost when the agent's reset overtakes it.
func afterHandshake(err error) error {
	return fmt.Errorf("the agent closed the connection after the TLS handshake (did it refuse the operator's client certificate?): %w", err)
}

// reached tells whether the call that filled p went over a connection the agent
// answered. A pooled connection's calls share it, and one the agent answered for an
// earlier call counts: as on a new connection, the agent speaks before any request.
func reached(p *peer.Peer) bool {
	info, ok := p.AuthInfo.(trackedInfo)
	return ok && info.state.up.Load()
}

// classify turns a gRPC error into the errors the controllers tell apart. p is the
// peer of the call (grpc.Peer), empty when it found no connection.
func (a *Agent) classify(op string, c *agentConn, p *peer.Peer, err error) error {
	if err == nil {
		return nil
	}
	if !reached(p) {
		if firstErr := c.failure.get(); firstErr != nil {
			return fmt.Errorf("agent %s %s: %w: %w", a.cfg.Address, op, ErrUnreachable, firstErr)
		}
		if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
			return fmt.Errorf("agent %s %s: %w: %s", a.cfg.Address, op, ErrUnreachable, st.Message())
		}
	}
	if status.Code(err) == codes.Aborted {
		return fmt.Errorf("agent %s %s: %w: %s", a.cfg.Address, op, ErrBusy, status.Convert(err).Message())
	}
	if status.Code(err) == codes.InvalidArgument {
		// The agent may refuse the checks with the header, before the operation.
		if invalid := asInvalidHealthChecks(status.Convert(err).Message()); invalid != nil {
			return fmt.Errorf("agent %s %s: %w", a.cfg.Address, op, invalid)
		}
	}
	return fmt.Errorf("agent %s %s: %w", a.cfg.Address, op, err)
}

// rpc is one call on a client; opts carry grpc.Peer, which classify reads.
type rpc func(ctx context.Context, c agentv1.AgentServiceClient, opts ...grpc.CallOption) error

// call runs one call on the pool's connection, or on a new one without a pool. A
// call that found the pool's connection broken (the agent restarted, or the host
// went away, since the connection's last call) is made once more on a new one: what
// it says then is what a call on a new connection says — unreachable (the fallback
// may use SSH) or the agent's answer. Every call so retried is idempotent, or
// (RenewCertificate) harmless to repeat.
func (a *Agent) call(ctx context.Context, op string, f rpc) error {
	c, release, reused, err := a.conn()
	if err != nil {
		return err
	}
	err = a.invoke(ctx, op, c, f)
	release(err)
	if !reused || !connectionFailed(err) || ctx.Err() != nil {
		return err
	}
	c, release, _, err = a.conn()
	if err != nil {
		return err
	}
	err = a.invoke(ctx, op, c, f)
	release(err)
	return err
}

// callOnNewConnection runs one call on a connection of its own, pool or not.
func (a *Agent) callOnNewConnection(ctx context.Context, op string, f rpc) error {
	c, err := a.dial()
	if err != nil {
		return err
	}
	defer c.cc.Close()
	return a.invoke(ctx, op, c, f)
}

func (a *Agent) invoke(ctx context.Context, op string, c *agentConn, f rpc) error {
	var p peer.Peer
	err := f(ctx, c.client, grpc.Peer(&p))
	return a.classify(op, c, &p, err)
}

// conn lends the connection for one call or Apply attempt; release gives it back
// with the call's error (a connection that failed is dropped, the next call dials).
// reused says an earlier call had it.
func (a *Agent) conn() (c *agentConn, release func(error), reused bool, err error) {
	if a.cfg.Pool == nil {
		c, err := a.dial()
		if err != nil {
			return nil, nil, false, err
		}
		return c, func(error) { _ = c.cc.Close() }, false, nil
	}
	pc, reused, err := a.cfg.Pool.get(a.poolKey(), a.dial)
	if err != nil {
		return nil, nil, false, err
	}
	return pc.agentConn, func(err error) { a.cfg.Pool.put(pc, connectionFailed(err)) }, reused, nil
}

// Status asks the agent what the host runs.
func (a *Agent) Status(ctx context.Context) (SystemStatus, error) {
	var resp *agentv1.StatusResponse
	err := a.call(ctx, "status", func(ctx context.Context, c agentv1.AgentServiceClient, opts ...grpc.CallOption) (err error) {
		resp, err = c.Status(ctx, &agentv1.StatusRequest{}, opts...)
		return err
	})
	if err != nil {
		return SystemStatus{}, err
	}
	st := SystemStatus{
		Transport:       nio.TransportAgent,
		CurrentSystem:   resp.GetCurrentSystem(),
		BootedSystem:    resp.GetBootedSystem(),
		Generation:      resp.GetGeneration(),
		NeedsReboot:     resp.GetNeedsReboot(),
		AgentVersion:    resp.GetAgentVersion(),
		Busy:            resp.GetBusy(),
		LastOperationID: resp.GetLastOperation().GetOperationId(),
		Features:        resp.GetFeatures(),
	}
	if resp.GetCertificateNotAfter() != nil {
		st.CertificateNotAfter = resp.GetCertificateNotAfter().AsTime()
	}
	return st, nil
}

// Facts asks the agent for its nixos-facter report.
func (a *Agent) Facts(ctx context.Context) ([]byte, error) {
	var resp *agentv1.FactsResponse
	err := a.call(ctx, "facts", func(ctx context.Context, c agentv1.AgentServiceClient, opts ...grpc.CallOption) (err error) {
		resp, err = c.Facts(ctx, &agentv1.FactsRequest{}, append(opts, grpc.MaxCallRecvMsgSize(maxFactsBytes))...)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !json.Valid(resp.GetReportJson()) {
		return nil, fmt.Errorf("agent %s facts: the report is not JSON", a.cfg.Address)
	}
	return resp.GetReportJson(), nil
}

// Confirm keeps the system of an operation awaiting confirmation. It always dials a
// new connection, never the pool's: the confirmation proves the new system still
// lets the operator in (a connection made before the activation may outlive a
// system that cut the operator off).
func (a *Agent) Confirm(ctx context.Context, operationID string) error {
	var resp *agentv1.ConfirmResponse
	err := a.callOnNewConnection(ctx, "confirm", func(ctx context.Context, c agentv1.AgentServiceClient, opts ...grpc.CallOption) (err error) {
		resp, err = c.Confirm(ctx, &agentv1.ConfirmRequest{OperationId: operationID}, opts...)
		return err
	})
	if err != nil {
		return err
	}
	if resp.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		return fmt.Errorf("agent %s confirm %s: too late, the operation ended %s", a.cfg.Address, operationID, outcomeOf(resp.GetOutcome()))
	}
	return nil
}

// Probe asks for the agent's status with a short timeout.
func (a *Agent) Probe(ctx context.Context) ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ProbeTimeout)
	defer cancel()
	st, err := a.Status(ctx)
	if err != nil {
		return ProbeResult{AgentError: err}
	}
	return ProbeResult{AgentReachable: true, AgentVersion: st.AgentVersion, System: &st}
}

// RenewCertificate has the agent generate a new key and CSR, signs the CSR with sign
// (the pki's signer, which checks the CSR names only this Machine) and sends the
// certificate back; the agent serves it from then on. It returns the new expiry.
// The pool's connection to the agent is closed after a renewal: the next call
// handshakes with the new certificate, as a restarted operator would.
func (a *Agent) RenewCertificate(ctx context.Context, sign func(csrPEM []byte) (certPEM []byte, err error)) (time.Time, error) {
	var notAfter time.Time
	err := a.call(ctx, "renew certificate", func(ctx context.Context, c agentv1.AgentServiceClient, opts ...grpc.CallOption) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.RenewCertificate(ctx, opts...)
		if err != nil {
			return err
		}
		if err := stream.Send(&agentv1.RenewCertificateRequest{Msg: &agentv1.RenewCertificateRequest_Begin{
			Begin: &agentv1.RenewBegin{DnsName: a.ServerName()},
		}}); err != nil {
			return recvErr(stream)
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		csr := resp.GetCsrPem()
		if len(csr) == 0 {
			return abandon(cancel, stream, errors.New("the agent sent no CSR"))
		}
		cert, err := sign(csr)
		if err != nil {
			return abandon(cancel, stream, fmt.Errorf("sign CSR: %w", err))
		}
		if err := stream.Send(&agentv1.RenewCertificateRequest{Msg: &agentv1.RenewCertificateRequest_Signed{
			Signed: &agentv1.SignedCertificate{CertificatePem: cert},
		}}); err != nil {
			return recvErr(stream)
		}
		resp, err = stream.Recv()
		if err != nil {
			return err
		}
		if resp.GetInstalled() == nil {
			return abandon(cancel, stream, errors.New("the agent did not confirm the installed certificate"))
		}
		notAfter = resp.GetInstalled().GetNotAfter().AsTime()
		return nil
	})
	if err == nil && a.cfg.Pool != nil {
		a.cfg.Pool.Forget(a.cfg.Namespace, a.cfg.Name)
	}
	return notAfter, err
}

// abandon ends a stream the operator gives up on and returns why. The stream ends
// here, not when the cancellation reaches it: gRPC fills the call's peer
// (grpc.Peer), which classify reads, as the stream ends.
func abandon(cancel context.CancelFunc, s grpc.ClientStream, why error) error {
	cancel()
	for s.RecvMsg(new(agentv1.RenewCertificateResponse)) == nil {
	}
	return why
}

// recvErr returns the status that made a Send fail: gRPC reports it on Recv.
func recvErr(s interface {
	Recv() (*agentv1.RenewCertificateResponse, error)
}) error {
	_, err := s.Recv()
	if err == nil || errors.Is(err, io.EOF) {
		return errors.New("the agent closed the stream")
	}
	return err
}

func outcomeOf(o agentv1.Outcome) Outcome {
	switch o {
	case agentv1.Outcome_OUTCOME_SUCCEEDED:
		return OutcomeSucceeded
	case agentv1.Outcome_OUTCOME_ROLLED_BACK:
		return OutcomeRolledBack
	default:
		return OutcomeFailed
	}
}
