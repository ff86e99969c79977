package main

import (
	"strings"
	"testing"
)

func TestParseMetricsSumsEverySeriesOfAName(t *testing.T) {
	text := `# HELP rest_client_requests_total Number of HTTP requests.
# TYPE rest_client_requests_total counter
rest_client_requests_total{code="200",host="127.0.0.1:6443",method="GET"} 12
rest_client_requests_total{code="201",host="127.0.0.1:6443",method="POST"} 3
controller_runtime_reconcile_total{controller="nixosconfiguration",result="success"} 4
controller_runtime_reconcile_total{controller="nixosconfiguration",result="requeue_after"} 6
process_cpu_seconds_total 1.5
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := m["rest_client_requests_total"]; got != 15 {
		t.Errorf("rest_client_requests_total = %v, want 15", got)
	}
	if got := m["controller_runtime_reconcile_total"]; got != 10 {
		t.Errorf("controller_runtime_reconcile_total = %v, want 10", got)
	}
	if got := m[`controller_runtime_reconcile_total{controller="nixosconfiguration",result="requeue_after"}`]; got != 6 {
		t.Errorf("reconcile series by labels = %v, want 6", got)
	}
	if got := m["process_cpu_seconds_total"]; got != 1.5 {
		t.Errorf("unlabelled metric = %v, want 1.5", got)
	}
}

func TestSpreadPercentiles(t *testing.T) {
	d := make([]float64, 100)
	for i := range d {
		d[99-i] = float64(i + 1) // unsorted on purpose
	}
	s := spread(d)
	if s.P50 != 50 || s.P95 != 95 || s.Max != 100 {
		t.Fatalf("spread of 1..100 = %+v, want p50 50, p95 95, max 100", s)
	}
	if one := spread([]float64{3}); one.P50 != 3 || one.Max != 3 {
		t.Fatalf("spread of one value = %+v", one)
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{5, 1, 3}); m != 3 {
		t.Errorf("median of 5 1 3 = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of 4 1 3 2 = %v", m)
	}
}
