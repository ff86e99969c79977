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
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
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
	return &Agent{cfg: cfg, tls: &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              cfg.RootCAs,
		ServerName:           identity.MachineDNSName(cfg.Namespace, cfg.Name),
		GetClientCertificate: cfg.GetClientCertificate,
	}}, nil
}

// ServerName is the name the agent's certificate must carry.
func (a *Agent) ServerName() string { return a.tls.ServerName }

// agentConn is one gRPC connection, used for one call or one Apply attempt: Confirm
// must arrive over a new connection, and a fresh connection per attempt makes
// "did this connection ever work?" a question about this attempt only.
type agentConn struct {
	cc     *grpc.ClientConn
	client agentv1.AgentServiceClient
	state  *connState
}

// connState records whether the agent ever answered over the connection. The first
// bytes read after the TLS handshake prove the agent accepted our certificate too
// (in TLS 1.3 a refused client certificate shows only then). Until then a failure
// means the request never reached a handler: the host counts as unreachable.
type connState struct {
	mu       sync.Mutex
	up       bool
	firstErr error
}

func (s *connState) markUp() {
	s.mu.Lock()
	s.up = true
	s.mu.Unlock()
}

// fail keeps the first error: later ones are the fallout of closing the connection
// ("use of closed network connection").
func (s *connState) fail(err error) {
	s.mu.Lock()
	if !s.up && s.firstErr == nil {
		s.firstErr = err
	}
	s.mu.Unlock()
}

func (s *connState) get() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up, s.firstErr
}

func (a *Agent) dial() (*agentConn, error) {
	state := &connState{}
	creds := &trackingCreds{TransportCredentials: credentials.NewTLS(a.tls), state: state}
	cc, err := grpc.NewClient("passthrough:///"+a.cfg.Address,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
			defer cancel()
			c, err := a.cfg.Dialer(ctx, addr)
			if err != nil {
				state.fail(err)
			}
			return c, err
		}),
		// Builds can be silent for minutes; pings notice a dead peer. The agent
		// permits pings every 10s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithConnectParams(grpcConnectParams(a.cfg.DialTimeout)),
	)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w: %w", a.cfg.Address, ErrUnreachable, err)
	}
	return &agentConn{cc: cc, client: agentv1.NewAgentServiceClient(cc), state: state}, nil
}

// trackingCreds wraps the TLS credentials to feed connState.
type trackingCreds struct {
	credentials.TransportCredentials
	state *connState
}

func (c *trackingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.state.fail(err)
		return nil, nil, err
	}
	return &trackedConn{Conn: conn, state: c.state}, info, nil
}

func (c *trackingCreds) Clone() credentials.TransportCredentials {
	return &trackingCreds{TransportCredentials: c.TransportCredentials.Clone(), state: c.state}
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

// classify turns a gRPC error into the errors the controllers tell apart.
func (a *Agent) classify(op string, c *agentConn, err error) error {
	if err == nil {
		return nil
	}
	if up, firstErr := c.state.get(); !up {
		if firstErr != nil {
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

// call runs one unary call on a new connection.
func (a *Agent) call(ctx context.Context, op string, f func(context.Context, agentv1.AgentServiceClient) error) error {
	c, err := a.dial()
	if err != nil {
		return err
	}
	defer c.cc.Close()
	return a.classify(op, c, f(ctx, c.client))
}

// Status asks the agent what the host runs.
func (a *Agent) Status(ctx context.Context) (SystemStatus, error) {
	var resp *agentv1.StatusResponse
	err := a.call(ctx, "status", func(ctx context.Context, c agentv1.AgentServiceClient) (err error) {
		resp, err = c.Status(ctx, &agentv1.StatusRequest{})
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
	err := a.call(ctx, "facts", func(ctx context.Context, c agentv1.AgentServiceClient) (err error) {
		resp, err = c.Facts(ctx, &agentv1.FactsRequest{}, grpc.MaxCallRecvMsgSize(maxFactsBytes))
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
// new connection: the confirmation proves the new system still lets the operator in.
func (a *Agent) Confirm(ctx context.Context, operationID string) error {
	var resp *agentv1.ConfirmResponse
	err := a.call(ctx, "confirm", func(ctx context.Context, c agentv1.AgentServiceClient) (err error) {
		resp, err = c.Confirm(ctx, &agentv1.ConfirmRequest{OperationId: operationID})
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
	return ProbeResult{AgentReachable: true, AgentVersion: st.AgentVersion}
}

// RenewCertificate has the agent generate a new key and CSR, signs the CSR with sign
// (the pki's signer, which checks the CSR names only this Machine) and sends the
// certificate back; the agent serves it from then on. It returns the new expiry.
func (a *Agent) RenewCertificate(ctx context.Context, sign func(csrPEM []byte) (certPEM []byte, err error)) (time.Time, error) {
	var notAfter time.Time
	err := a.call(ctx, "renew certificate", func(ctx context.Context, c agentv1.AgentServiceClient) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.RenewCertificate(ctx)
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
			return errors.New("the agent sent no CSR")
		}
		cert, err := sign(csr)
		if err != nil {
			return fmt.Errorf("sign CSR: %w", err)
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
			return errors.New("the agent did not confirm the installed certificate")
		}
		notAfter = resp.GetInstalled().GetNotAfter().AsTime()
		return nil
	})
	return notAfter, err
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
