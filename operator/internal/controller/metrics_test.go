package controller

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAgentConnectionMetricsReadThePool(t *testing.T) {
	reg := prometheus.NewRegistry()
	handshakes, resumed, open := int64(7), int64(5), 2
	RegisterAgentConnectionMetrics(reg, func() (int64, int64, int) { return handshakes, resumed, open })
	want := `
# HELP nio_agent_connections Connections to agents the operator holds open.
# TYPE nio_agent_connections gauge
nio_agent_connections 2
# HELP nio_agent_tls_handshakes_total TLS handshakes of connections to agents.
# TYPE nio_agent_tls_handshakes_total counter
nio_agent_tls_handshakes_total 7
# HELP nio_agent_tls_resumed_handshakes_total TLS handshakes to agents that resumed a session (no certificate checks).
# TYPE nio_agent_tls_resumed_handshakes_total counter
nio_agent_tls_resumed_handshakes_total 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	handshakes, open = 9, 0
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.NewReplacer("handshakes_total 7", "handshakes_total 9", "connections 2", "connections 0").Replace(want))); err != nil {
		t.Fatalf("after more handshakes: %v", err)
	}
}
