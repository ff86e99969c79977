package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshEndpoint stands where every simulated Machine's SSH daemon would be: it counts
// the connections the operator opens and closes them. The Machines carry an SSH key
// Secret and a pinned host key, as installed hosts do, so the count is the operator's
// SSH logins (attempted) while the agents answer: the target is 0.
type sshEndpoint struct {
	ln    net.Listener
	conns atomic.Int64
	// privateKeyPEM is the client key every Machine's Secret holds; hostKey the
	// public key every Machine pins.
	privateKeyPEM []byte
	hostKey       string
}

func startSSHEndpoint() (*sshEndpoint, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "nio-bench")
	if err != nil {
		return nil, err
	}
	hostPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(hostPub)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &sshEndpoint{ln: ln, privateKeyPEM: pem.EncodeToMemory(block),
		hostKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.conns.Add(1)
			c.Close()
		}
	}()
	return e, nil
}

func (e *sshEndpoint) port() int    { return e.ln.Addr().(*net.TCPAddr).Port }
func (e *sshEndpoint) close()       { e.ln.Close() }
func (e *sshEndpoint) count() int64 { return e.conns.Load() }

// IdleRound is the idle round: N Machines with nothing to do, watched for a while.
// Every rate is per minute of the round.
type IdleRound struct {
	Seconds float64 `json:"seconds"`
	// SettleSeconds is how long the round waited after the last one before its
	// clock started.
	SettleSeconds float64 `json:"settleSeconds"`
	// OperatorCPUSecondsPerMinute is the operator's utime+stime.
	OperatorCPUSecondsPerMinute float64 `json:"operatorCPUSecondsPerMinute"`
	// APIRequestsPerMinute is the operator's rest_client_requests_total; ByMethod
	// splits it by HTTP method.
	APIRequestsPerMinute float64            `json:"apiRequestsPerMinute"`
	APIRequestsByMethod  map[string]float64 `json:"apiRequestsByMethod"`
	LsRemotesPerMinute   float64            `json:"lsRemotesPerMinute"`
	FetchesPerMinute     float64            `json:"fetchesPerMinute"`
	// SSHConnectionsPerMinute is what the SSH endpoint accepted.
	SSHConnectionsPerMinute float64 `json:"sshConnectionsPerMinute"`
	// TLSHandshakesPerMinute are the operator's handshakes with agents
	// (nio_agent_tls_handshakes_total): one per probe while connections close
	// between probes.
	TLSHandshakesPerMinute float64 `json:"tlsHandshakesPerMinute"`
	// Applies is how many Apply streams the agents received (0 expected).
	Applies int `json:"applies"`
	// Passes are the controllers' reconciles in the round, by controller.
	Passes map[string]float64 `json:"passes"`
	// CPUSeconds is every child process's CPU time in the round, by command.
	CPUSeconds map[string]float64 `json:"cpuSeconds"`
}

// measureIdle waits o.idle with nothing to do and reports what the operator spent.
// It starts a probe interval (and a margin) after the last round: the first probe
// after an apply sees the new system running and records it once, a cost of the
// apply, not of being idle.
func measureIdle(ctx context.Context, st *stack, git *gitServer, sim *fleetSim, ssh *sshEndpoint, o fleetOptions) (*IdleRound, error) {
	settle := o.probeInterval
	if settle == 0 {
		settle = time.Minute
	}
	settle += 15 * time.Second
	o.log.Info("idle round: settling", "for", settle)
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m0, err := st.metrics(ctx)
	if err != nil {
		return nil, err
	}
	s0, err := sim.stats(ctx)
	if err != nil {
		return nil, err
	}
	g0, u0, c0, ssh0 := git.counts(), st.usage(), childCPU(), ssh.count()
	t0 := time.Now()
	o.log.Info("idle round", "machines", o.machines, "for", o.idle)
	prof := o.profiler(st, sim)
	prof.start(ctx, fmt.Sprintf("%d-idle", o.machines))
	defer prof.wait()
	select {
	case <-time.After(o.idle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m1, err := st.metrics(ctx)
	if err != nil {
		return nil, err
	}
	s1, err := sim.stats(ctx)
	if err != nil {
		return nil, err
	}
	wall := time.Since(t0)
	perMin := func(v float64) float64 { return v / wall.Minutes() }
	g := git.counts().minus(g0)
	r := &IdleRound{
		Seconds:                     wall.Seconds(),
		SettleSeconds:               settle.Seconds(),
		OperatorCPUSecondsPerMinute: perMin(st.usage().CPUSeconds - u0.CPUSeconds),
		APIRequestsPerMinute:        perMin(m1["rest_client_requests_total"] - m0["rest_client_requests_total"]),
		APIRequestsByMethod:         map[string]float64{},
		LsRemotesPerMinute:          perMin(float64(g.LsRemotes)),
		FetchesPerMinute:            perMin(float64(g.Fetches)),
		SSHConnectionsPerMinute:     perMin(float64(ssh.count() - ssh0)),
		TLSHandshakesPerMinute:      perMin(m1["nio_agent_tls_handshakes_total"] - m0["nio_agent_tls_handshakes_total"]),
		Passes:                      map[string]float64{},
		CPUSeconds:                  cpuDelta(c0, childCPU()),
	}
	for k, v := range m1 {
		if strings.HasPrefix(k, "rest_client_requests_total{") {
			if method := label(k, "method"); method != "" {
				r.APIRequestsByMethod[method] += perMin(v - m0[k])
			}
		}
		if strings.HasPrefix(k, "controller_runtime_reconcile_total{") {
			r.Passes[label(k, "controller")] += v - m0[k]
		}
	}
	for k, s := range s1 {
		r.Applies += len(s.ApplyHeaders) - len(s0[k].ApplyHeaders)
	}
	o.log.Info("idle round done", "cpu_s_per_min", r.OperatorCPUSecondsPerMinute, "api_per_min", r.APIRequestsPerMinute,
		"by_method", r.APIRequestsByMethod, "ls_remotes_per_min", r.LsRemotesPerMinute, "ssh_per_min", r.SSHConnectionsPerMinute, "tls_handshakes_per_min", r.TLSHandshakesPerMinute,
		"applies", r.Applies, "passes", r.Passes)
	return r, nil
}

// label is the value of label name in a metric key as parseMetrics writes it
// (name{a="x",b="y"}).
func label(key, name string) string {
	i := strings.Index(key, name+`="`)
	if i < 0 {
		return ""
	}
	rest := key[i+len(name)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return rest
}
