package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/operator/internal/transport"
)

// Metrics are the operator's own Prometheus metrics (controller-runtime adds its
// workqueue and client metrics beside them on the same endpoint).
type Metrics struct {
	ReconcileDuration *prometheus.HistogramVec
	Applies           *prometheus.CounterVec
	ApplyDuration     *prometheus.HistogramVec
	LastApplied       *prometheus.GaugeVec
	// HealthCheckFailures counts checks that did not pass after an activation (the
	// agent rolled back), by configuration and check.
	HealthCheckFailures *prometheus.CounterVec

	// Fleets: rollouts begun and ended (by result: completed, reverted,
	// superseded), each fleet's rollout phase (1 for the current one) and Machines by
	// state (updated, failed, pending), and how long batches took.
	FleetRolloutsStarted  prometheus.Counter
	FleetRolloutsFinished *prometheus.CounterVec
	FleetPhase            *prometheus.GaugeVec
	FleetMachines         *prometheus.GaugeVec
	FleetBatchDuration    *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ReconcileDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nio_reconcile_duration_seconds", Help: "Duration of one reconcile pass, by kind and result.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"kind", "result"}),
		Applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_applies_total", Help: "Operations on hosts, by result (Succeeded, Failed, RolledBack) and transport (agent, ssh, install).",
		}, []string{"result", "transport"}),
		ApplyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nio_apply_duration_seconds", Help: "Duration of operations on hosts, by transport.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 12),
		}, []string{"transport"}),
		LastApplied: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nio_last_applied_timestamp_seconds", Help: "When each configuration last applied successfully (Unix time).",
		}, []string{"namespace", "name"}),
		HealthCheckFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_health_check_failures_total", Help: "Health checks that did not pass after an activation (the host rolled back), by configuration and check.",
		}, []string{"namespace", "configuration", "check"}),
		FleetRolloutsStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nio_fleet_rollouts_started_total", Help: "Rollouts of a NixosFleet revision begun.",
		}),
		FleetRolloutsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_fleet_rollouts_finished_total", Help: "Rollouts of a NixosFleet revision ended, by result (completed, reverted, superseded).",
		}, []string{"result"}),
		FleetPhase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nio_fleet_rollout_phase", Help: "Each fleet's rollout phase: 1 for the current phase, 0 for the others.",
		}, []string{"namespace", "name", "phase"}),
		FleetMachines: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nio_fleet_machines", Help: "Machines of each fleet by state against its revision: updated, failed, pending.",
		}, []string{"namespace", "name", "state"}),
		FleetBatchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nio_fleet_batch_duration_seconds", Help: "Duration of rollout batches, from their start to their success or failure, by result.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.ReconcileDuration, m.Applies, m.ApplyDuration, m.LastApplied, m.HealthCheckFailures,
			m.FleetRolloutsStarted, m.FleetRolloutsFinished, m.FleetPhase, m.FleetMachines, m.FleetBatchDuration)
	}
	return m
}

func (m *Metrics) observeReconcile(kind string, start time.Time, err error) {
	if m == nil {
		return
	}
	result := "success"
	if err != nil {
		result = "error"
	}
	m.ReconcileDuration.WithLabelValues(kind, result).Observe(time.Since(start).Seconds())
}

func (m *Metrics) observeApply(obj *nio.NixosConfiguration, res transport.ApplyResult, d time.Duration) {
	if m == nil {
		return
	}
	m.Applies.WithLabelValues(string(res.Outcome), string(res.Transport)).Inc()
	m.ApplyDuration.WithLabelValues(string(res.Transport)).Observe(d.Seconds())
	if res.Outcome == transport.OutcomeSucceeded {
		m.LastApplied.WithLabelValues(obj.Namespace, obj.Name).SetToCurrentTime()
	}
}

// observeHealthFailures counts the checks of report that did not pass.
func (m *Metrics) observeHealthFailures(obj *nio.NixosConfiguration, report *transport.HealthReport) {
	if m == nil || report == nil || report.Passed {
		return
	}
	counted := false
	for _, c := range report.Results {
		if !c.Passed {
			m.HealthCheckFailures.WithLabelValues(obj.Namespace, obj.Name, c.Name).Inc()
			counted = true
		}
	}
	if !counted && report.FirstFailure != "" {
		m.HealthCheckFailures.WithLabelValues(obj.Namespace, obj.Name, report.FirstFailure).Inc()
	}
}

// forget drops a deleted configuration's series.
func (m *Metrics) forget(obj *nio.NixosConfiguration) {
	if m == nil {
		return
	}
	m.LastApplied.DeleteLabelValues(obj.Namespace, obj.Name)
	m.HealthCheckFailures.DeletePartialMatch(prometheus.Labels{"namespace": obj.Namespace, "configuration": obj.Name})
}

// forgetFleet drops a deleted fleet's series.
func (m *Metrics) forgetFleet(namespace, name string) {
	if m == nil {
		return
	}
	m.FleetPhase.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "name": name})
	m.FleetMachines.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "name": name})
}

// RegisterSourceMetrics exposes the source cache's network counters and size.
func RegisterSourceMetrics(reg prometheus.Registerer, c *source.Cache) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nio_git_ls_remote_total", Help: "Ref listings (ls-remote) sent to Git servers.",
		}, func() float64 { return float64(c.Stats().LsRemotes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nio_git_fetch_total", Help: "Fetches from Git servers.",
		}, func() float64 { return float64(c.Stats().Fetches) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nio_git_repositories", Help: "Repositories (per URL and credentials) the source cache holds.",
		}, func() float64 { return float64(c.Stats().Repos) }),
	)
}

// RegisterAgentConnectionMetrics exposes the agent connections' TLS handshakes and
// how many connections are open (stats: hostconn.Factory.AgentStats). Handshakes per
// apply and per probe are what an agent connection costs the operator's CPU; open
// connections what it costs its memory.
func RegisterAgentConnectionMetrics(reg prometheus.Registerer, stats func() (handshakes, resumed int64, open int)) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nio_agent_tls_handshakes_total", Help: "TLS handshakes of connections to agents.",
		}, func() float64 { h, _, _ := stats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nio_agent_tls_resumed_handshakes_total", Help: "TLS handshakes to agents that resumed a session (no certificate checks).",
		}, func() float64 { _, r, _ := stats(); return float64(r) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nio_agent_connections", Help: "Connections to agents the operator holds open.",
		}, func() float64 { _, _, n := stats(); return float64(n) }),
	)
}
