package webhook

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a delivery is rejected: the values of the reason label of
// nio_webhook_rejected_total.
const (
	ReasonMethod    = "method"    // not a POST (405)
	ReasonSize      = "size"      // body over the limit (413)
	ReasonSecret    = "secret"    // the shared secret could not be read, or is empty (503)
	ReasonSignature = "signature" // signature or token missing or wrong (401)
	ReasonPayload   = "payload"   // verified, but not a push NIO can read (400)
	ReasonReplay    = "replay"    // verified push handled before (200 "duplicate")
	ReasonThrottled = "throttled" // the source has no refused delivery left (429)
)

// reasons are every value of the reason label.
var reasons = []string{ReasonMethod, ReasonSize, ReasonSecret, ReasonSignature, ReasonPayload, ReasonReplay, ReasonThrottled}

type metrics struct {
	received      *prometheus.CounterVec
	verified      *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	triggered     *prometheus.CounterVec
	triggerErrors *prometheus.CounterVec
}

// newMetrics creates the counters and registers them with reg (nil: not registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_webhook_received_total", Help: "Deliveries received on /hook/<provider>, by provider.",
		}, []string{"provider"}),
		verified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_webhook_verified_total", Help: "Deliveries whose signature or token matched the shared secret, by provider.",
		}, []string{"provider"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_webhook_rejected_total", Help: "Deliveries refused, by provider and reason (method, size, secret, signature, payload, replay, throttled).",
		}, []string{"provider", "reason"}),
		triggered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_webhook_triggered_configurations_total", Help: "NixosConfigurations and NixosFleets triggered by verified pushes, by provider (a fleet counts once for all its Machines).",
		}, []string{"provider"}),
		triggerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nio_webhook_trigger_errors_total", Help: "Verified pushes whose trigger failed (answered 500 so the forge can redeliver), by provider.",
		}, []string{"provider"}),
	}
	// Series exist at zero from the start, so rate() and alerts see the first event.
	for name := range providers {
		m.received.WithLabelValues(name)
		m.verified.WithLabelValues(name)
		m.triggered.WithLabelValues(name)
		m.triggerErrors.WithLabelValues(name)
		for _, reason := range reasons {
			m.rejected.WithLabelValues(name, reason)
		}
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.received, m.verified, m.rejected, m.triggered, m.triggerErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register webhook metrics: %w", err)
		}
	}
	return m, nil
}
